"""Routing a request and searching: pick the arm from the control ledger (fail safe to last_good when the
control view is stale), run the search on the backend serving that config, build its outcome and hand it
to the outcome publisher — at once, or after the background measurements of a sampled request: an exact
search for the share of unlabeled requests sampled to measure recall without labels (docs/contracts.md,
"Recall without labels"), and last_good's answer to the same query for the share of candidate requests
sampled to measure how much the candidate changes the results ("Result-diff metrics"), and the candidate's
own answer for the share of a shadow deployment's requests mirrored to it ("Shadow traffic")."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec.structs

from canary.core.deployment import ConfigRef, ControlLedger
from canary.core.models import ARMS, MAX_OUTCOME_METRICS, Arm, SearchOutcome
from canary.core.rings import Ring, match_ring, rings_of_snapshot
from canary.core.split import baseline_of, candidate_of, user_group
from canary.observability.metrics import RouterMetrics
from router.admission import Admission, Overloaded
from router.backends.base import (
    BackendError,
    ExactSearchBackend,
    SearchBackend,
    exact_searcher,
    require_collection,
)
from router.backends.registry import BackendRegistry
from router.backends.threads import CPU_POOL
from router.outcomes import Delivery, OutcomePublisher, delivery_log
from router.requests import (
    SearchRequest,
    jaccard_at_10,
    mrr_at_10,
    ndcg_at_10,
    rbo_at_10,
    recall_at_10,
    top1_changed,
)
from router.runtime import now_ms
from router.stats import RouterStats

log = logging.getLogger("canary.router")

DEFAULT_RECALL_SAMPLE_RATE: Final = 0.10  # docs/contracts.md, "Recall without labels": why 10 %
DEFAULT_MAX_EXACT_IN_FLIGHT: Final = 16  # a burst beyond this drops samples (counted), never queues them
DEFAULT_EXACT_TIMEOUT_MS: Final = 2000
EXACT_K: Final = 10
DEFAULT_DIFF_SAMPLE_RATE: Final = 0.10  # docs/contracts.md, "Result-diff metrics": cost and why 10 %
DEFAULT_MAX_DIFF_IN_FLIGHT: Final = 8
DEFAULT_MAX_MIRROR_IN_FLIGHT: Final = 16
SHADOW_SUFFIX: Final = "#shadow"  # a mirrored request's outcome: request_id and event_id end with it


def recall_sample_rates(recall_sample_rate: float | Mapping[str, float]) -> dict[str, float]:
    """One share for both arms, or one per arm ({"candidate": 0.2, "last_good": 0.05}; a missing arm: the
    default); ValueError for a share outside [0, 1]."""
    rates: dict[str, float] = (
        {arm: float(recall_sample_rate.get(arm, DEFAULT_RECALL_SAMPLE_RATE)) for arm in ARMS}
        if isinstance(recall_sample_rate, Mapping)
        else dict.fromkeys(ARMS, float(recall_sample_rate))
    )
    for arm, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"recall_sample_rate[{arm}] = {rate!r}: must be between 0 and 1")
    return rates


def sampled_for_exact(request_id: str, rate: float) -> bool:
    """Whether a request is in the exact-search sample: a stable hash of its id, so a re-processed request
    is sampled (or not) again, independently of the arm it is routed to."""
    if rate <= 0.0:
        return False
    return zlib.crc32(b"exact:" + request_id.encode()) % 1_000_000 < rate * 1_000_000


def sampled_for_diff(request_id: str, rate: float) -> bool:
    """Whether a candidate request is in the result-diff sample: a stable hash of its id, independent of the
    exact-search sample (another salt)."""
    if rate <= 0.0:
        return False
    return zlib.crc32(b"diff:" + request_id.encode()) % 1_000_000 < rate * 1_000_000


def sampled_for_mirror(request_id: str, share: float) -> bool:
    """Whether a request served by last_good is mirrored to its shadow candidate: a stable hash of its id."""
    if share <= 0.0:
        return False
    return zlib.crc32(b"mirror:" + request_id.encode()) % 1_000_000 < share * 1_000_000


@dataclass(slots=True)
class _MirrorJob:
    """A shadow deployment's candidate search of a mirrored request, and whom its outcome names."""

    backend: SearchBackend
    candidate: ConfigRef
    deployment_id: str


@dataclass(slots=True)
class _DiffJob:
    """last_good's search of a sampled candidate request: which backend, with which snapshot."""

    backend: SearchBackend
    snapshot: Mapping[str, Any]


def _settle(outer: asyncio.Future[Any], inner: asyncio.Future[Any]) -> None:
    """Complete ``outer`` as ``inner`` completed."""
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())  # type: ignore[arg-type]
    else:
        outer.set_result(inner.result())


@dataclass(frozen=True, slots=True)
class ConfigUsed:
    name: str
    version: str
    content_hash: str
    arm: Arm
    deployment_id: str | None
    ring: str | None = None  # the ring that routed the request (canary.core.rings); None: the sticky split

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "config_name": self.name,
            "config_version": self.version,
            "config_hash": self.content_hash,
            "arm": self.arm,
            "deployment_id": self.deployment_id,
        }
        if self.ring is not None:
            d["ring"] = self.ring
        return d


class Searcher:
    """Routes and serves requests from the ledger's state as it is right now. ``stale`` says whether the
    router's view of the control topic is too old to send anything to a candidate."""

    def __init__(
        self,
        router_id: str,
        ledger: ControlLedger,
        backends: BackendRegistry,
        outcomes: OutcomePublisher,
        stale: Callable[[], bool],
        stats: RouterStats,
        metrics: RouterMetrics,
        search_timeout_ms: int,
        recall_sample_rates: dict[str, float],
        max_exact_in_flight: int,
        exact_timeout_ms: int,
        diff_sample_rate: float = DEFAULT_DIFF_SAMPLE_RATE,
        max_diff_in_flight: int = DEFAULT_MAX_DIFF_IN_FLIGHT,
        max_mirror_in_flight: int = DEFAULT_MAX_MIRROR_IN_FLIGHT,
    ) -> None:
        self.router_id = router_id
        self.ledger = ledger
        self.backends = backends
        self.outcomes = outcomes
        self._stale = stale
        self.stats = stats
        self.metrics = metrics
        self._timeout_s = search_timeout_ms / 1000.0
        # A backend that declares max_concurrency (the bundled engine: its cores) serves in bounded lanes per
        # arm and candidate; beyond them a request is shed (router/admission.py). Others are not limited here.
        self._admissions: dict[int, Admission] = {}
        # Recall without labels: this share of unlabeled requests (per arm) is searched again exactly, off
        # the hot path, at most max_exact_in_flight at a time (more are dropped and counted, never queued).
        self.recall_sample_rates = recall_sample_rates
        self._exact_max = max(0, max_exact_in_flight)
        self._exact_in_flight = 0
        self._exact_timeout_s = exact_timeout_ms / 1000.0
        # Result diff: this share of the candidate's answered requests is searched again with last_good's
        # config, off the hot path, at most max_diff_in_flight at a time (the rest dropped and counted).
        if not 0.0 <= diff_sample_rate <= 1.0:
            raise ValueError(f"diff_sample_rate = {diff_sample_rate!r}: must be between 0 and 1")
        self.diff_sample_rate = diff_sample_rate
        self._diff_max = max(0, max_diff_in_flight)
        self._diff_in_flight = 0
        # Shadow: a shadow deployment's mirrored requests are searched by its candidate off the serving path,
        # at most max_mirror_in_flight at a time (the rest dropped and counted, never queued).
        self._mirror_max = max(0, max_mirror_in_flight)
        self._mirror_in_flight = 0
        self.exact_tasks: set[asyncio.Task[None]] = set()  # every background measurement, exact or diff
        self._rings: dict[str, tuple[Ring, ...]] = {}  # per deployment, read once from its signed snapshot

    def route(self, request: SearchRequest) -> tuple[ConfigRef, ConfigUsed]:
        """Pick the arm for a request from the state as it is right now (one or several candidates)."""
        last_good = self.ledger.last_good
        assert last_good is not None
        live = self.ledger.live
        if not live:
            latest = self.ledger.latest
            deployment_id = latest.deployment_id if latest else None
            return last_good, ConfigUsed(
                last_good.name, last_good.version, last_good.content_hash, "last_good", deployment_id
            )
        running = [d for d in live if d.status == "running"]
        ringed = self._ring_route(request, running) if running and not self._stale() else None
        if ringed is not None:
            return ringed
        chosen = None
        if running and self._stale():
            # Fail safe: a view of the control topic older than the bound may miss a rollback.
            self.stats.failsafe_requests += 1
            self.metrics.failsafe_requests.inc()
        elif running:
            chosen = candidate_of(request.routing_key, [d.arc for d in running])
        if chosen is not None:
            dep = self.ledger.deployments[chosen]
            config, arm = dep.candidate, "candidate"
        else:
            # last_good, counted as the baseline of exactly one live deployment
            baseline = baseline_of(request.routing_key, [d.deployment_id for d in live])
            dep = self.ledger.deployments[baseline] if baseline else live[-1]
            config, arm = dep.last_good, "last_good"
        used = ConfigUsed(config.name, config.version, config.content_hash, arm, dep.deployment_id)  # type: ignore[arg-type]
        return config, used

    def _ring_route(self, request: SearchRequest, running: list[Any]) -> tuple[ConfigRef, ConfigUsed] | None:
        """The first running deployment with a ring this request belongs to decides its arm (a ring to the
        candidate takes it whatever the hash says; one to last_good keeps it away). Never while the control
        view is stale: the fail-safe sends everyone to last_good."""
        for dep in running:
            rings = self._rings.get(dep.deployment_id)
            if rings is None:
                rings = self._rings[dep.deployment_id] = rings_of_snapshot(dep.candidate.snapshot)
                while len(self._rings) > 64:  # bounded: ended deployments' entries go first
                    del self._rings[next(iter(self._rings))]
            ring = match_ring(rings, request.user_id, request.attributes) if rings else None
            if ring is None:
                continue
            config = dep.candidate if ring.to == "candidate" else dep.last_good
            arm: Arm = "candidate" if ring.to == "candidate" else "last_good"
            return config, ConfigUsed(
                config.name, config.version, config.content_hash, arm, dep.deployment_id, ring.name
            )
        return None

    async def execute_search(
        self,
        query: str,
        collection_name: str,
        user_id: str | None = None,
        relevant_ids: list[str] | None = None,
        request_id: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> tuple[list[str], dict[str, Any]]:
        """The spec's in-process API: route, search, publish the outcome, return (results, config_used).
        ConfigError, before anything is counted or published, if the backend serving the request's config
        says ``collection_name`` is not one of its collections."""
        request = SearchRequest(
            request_id=request_id or uuid.uuid4().hex,
            query=query,
            collection=collection_name,
            user_id=user_id,
            ts=now_ms(),
            relevant_ids=tuple(relevant_ids) if relevant_ids is not None else None,
            attributes=attributes,
        )
        results, used, ack, delivery = await self.handle(request, check_collection=True)
        if ack.done():
            self.outcomes.count_delivered(delivery.outcome)
        else:  # sampled for exact search: the answer does not wait for it, the outcome follows
            ack.add_done_callback(lambda fut: self._sampled_delivered(fut, delivery))
        return results, used.to_dict()

    def _sampled_delivered(self, ack: asyncio.Future[Any], delivery: Delivery) -> None:
        if ack.cancelled():
            return
        if ack.exception() is not None:
            self.outcomes.delivery_failed("outcome", ack.exception())
            delivery_log.error("%s: sampled outcome not delivered: %r", self.router_id, ack.exception())
            return
        self.outcomes.count_delivered(delivery.outcome)

    def _shadow_delivered(self, ack: asyncio.Future[Any], shadow: SearchOutcome) -> None:
        if ack.cancelled():
            return
        if ack.exception() is not None:
            self.outcomes.delivery_failed("outcome", ack.exception())
            return
        self.outcomes.count_delivered(shadow)

    def backend_for(self, config: ConfigRef) -> SearchBackend:
        """The backend that serves ``config``: its preset's allow-listed ``backend`` section, else this
        router's own (router.backends.registry)."""
        return self.backends.for_config(config)

    def exact_for(self, backend: SearchBackend, request: SearchRequest, arm: str) -> ExactSearchBackend | None:
        """The backend's exact search if this (unlabeled, answered) request is in the sample and a slot is
        free; a sampled request finding no slot is dropped and counted (serving never waits for it)."""
        if not sampled_for_exact(request.request_id, self.recall_sample_rates[arm]):
            return None
        exact = exact_searcher(backend)
        if exact is None:
            return None
        if self._exact_in_flight >= self._exact_max:
            self._count_exact(arm, "busy")
            return None
        self._exact_in_flight += 1
        return exact

    def diff_for(self, request: SearchRequest, used: ConfigUsed) -> _DiffJob | None:
        """last_good's search for this (answered) candidate request if it is in the result-diff sample and a
        slot is free; a sampled request finding no slot is dropped and counted (serving never waits)."""
        if used.arm != "candidate" or not sampled_for_diff(request.request_id, self.diff_sample_rate):
            return None
        dep = self.ledger.deployments.get(used.deployment_id) if used.deployment_id else None
        if dep is None:
            return None
        if self._diff_in_flight >= self._diff_max:
            self._count_diff("busy")
            return None
        self._diff_in_flight += 1
        return _DiffJob(self.backend_for(dep.last_good), dep.last_good.snapshot)

    def mirror_for(self, request: SearchRequest, used: ConfigUsed) -> _MirrorJob | None:
        """The shadow candidate's search for this last_good request if its deployment is in shadow, the
        request is in the mirrored share and a slot is free (a full router drops it, counted). Never while the
        control view is stale: it may have missed the rollback that ended the shadow."""
        if used.arm != "last_good" or used.deployment_id is None or used.ring is not None:
            return None  # a ring's request is targeted traffic, not a sample of last_good's users
        dep = self.ledger.deployments.get(used.deployment_id)
        if dep is None or not sampled_for_mirror(request.request_id, dep.shadow_share) or self._stale():
            return None
        if self._mirror_in_flight >= self._mirror_max:
            self._count_mirror("busy")
            return None
        self._mirror_in_flight += 1
        return _MirrorJob(self.backend_for(dep.candidate), dep.candidate, dep.deployment_id)

    def _count_mirror(self, result: str) -> None:
        self.stats.mirrored[result] = self.stats.mirrored.get(result, 0) + 1
        self.metrics.mirrored.labels(result).inc()

    async def _search(
        self, backend: SearchBackend, request: SearchRequest, config: ConfigRef, used: ConfigUsed
    ) -> Sequence[str]:
        """The backend's answer within the search timeout, in its admission lanes when it has them."""
        admission = self._admission_for(backend)
        if admission is None:
            async with asyncio.timeout(self._timeout_s):
                return await backend.search(request.query, request.collection, config.snapshot)
        live = self.ledger.live
        admission.follow(
            {d.deployment_id: d.candidate_weight for d in live if d.candidate_weight}, (d.deployment_id for d in live)
        )
        return await admission.run(
            used.arm,
            used.deployment_id,
            lambda: backend.search(request.query, request.collection, config.snapshot),
            self._timeout_s,
        )

    @contextlib.contextmanager
    def _background(self, backend: SearchBackend) -> Iterator[None]:
        """Background searches (a mirrored request, last_good's answer for a result diff) compute on the
        candidates' threads when the backend has admission lanes: never on the threads last_good's served
        searches need (their number is bounded by the mirror and diff in-flight caps)."""
        admission = self._admission_for(backend)
        token = CPU_POOL.set(admission.background_pool()) if admission is not None else None
        try:
            yield
        finally:
            if token is not None:
                CPU_POOL.reset(token)

    def close(self) -> None:
        """Release the admission lanes' candidate threads (a search still computing ends on its own)."""
        for admission in self._admissions.values():
            admission.close()

    def _admission_for(self, backend: SearchBackend) -> Admission | None:
        admission = self._admissions.get(id(backend))
        if admission is None:
            concurrency = getattr(backend, "max_concurrency", None)
            if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
                return None
            admission = self._admissions[id(backend)] = Admission(concurrency, on_shed=self._count_shed)
        return admission

    def _count_shed(self, arm: str) -> None:
        self.stats.shed[arm] = self.stats.shed.get(arm, 0) + 1
        self.metrics.shed.labels(arm).inc()

    def _count_diff(self, result: str) -> None:
        self.stats.diff_samples[result] = self.stats.diff_samples.get(result, 0) + 1
        self.metrics.diff_samples.labels(result).inc()

    def _count_exact(self, arm: str, result: str) -> None:
        self.stats.exact_samples[result] = self.stats.exact_samples.get(result, 0) + 1
        self.metrics.exact_samples.labels(arm, result).inc()

    async def handle(
        self, request: SearchRequest, wait_ack: bool = True, check_collection: bool = False
    ) -> tuple[list[str], ConfigUsed, asyncio.Future[Any], Delivery]:
        """Route and serve one request, then publish its outcome: at once, or — when it is sampled for exact
        search — from a background task once the exact top-10 is known (the answer never waits for that,
        and its latency is the served search's alone). The returned ack completes when the broker has the
        final outcome (``delivery.outcome``). ``check_collection`` (the in-process API): refuse a collection
        the serving backend says it does not have, before counting the request."""
        config, used = self.route(request)
        backend = self.backend_for(config)
        if check_collection:
            require_collection(backend, request.collection, config.name)
        self.stats.requests += 1
        self.stats.by_arm[used.arm] += 1
        self.metrics.requests.labels(used.arm).inc()
        if used.arm == "candidate":
            self.stats.last_candidate_dispatch_ms = now_ms()
        started = time.perf_counter()
        error: str | None = None
        results: list[str] = []
        engine_metrics: Any = None
        try:
            answer = await self._search(backend, request, config, used)
            results = list(answer)
            # a RankedResults' own numbers (list() drops the attribute, so read it before)
            engine_metrics = getattr(answer, "metrics", None)
        except TimeoutError:
            error = "timeout"
        except Overloaded as exc:
            error = "overloaded"
            log.debug("request shed: %s", exc)
        except BackendError as exc:  # a backend's own error code (router.backends.base.BACKEND_ERROR_CODES)
            error = exc.error_code
            log.debug("search failed: %r", exc)
        except Exception as exc:
            error = "backend_error"
            log.debug("search failed: %r", exc)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if error:
            self.stats.errors += 1
        ranked = [] if error else results
        metrics = dict(engine_metrics or {}) if not error else {}
        if request.relevant_ids:  # quality beyond recall, for presets' custom metrics (an error scores 0)
            metrics["ndcg_at_10"] = round(ndcg_at_10(ranked, request.relevant_ids) or 0.0, 6)
            metrics["mrr_at_10"] = round(mrr_at_10(ranked, request.relevant_ids) or 0.0, 6)
        outcome = SearchOutcome(
            event_id=f"{self.router_id}:{request.request_id}",
            request_id=request.request_id,
            ts=self.outcomes.clock(),
            deployment_id=used.deployment_id,
            config_name=used.name,
            config_version=used.version,
            config_hash=used.content_hash,
            arm=used.arm,
            latency_ms=round(latency_ms, 3),
            # A labeled request that errored found nothing relevant: recall 0, never "unknown" (an error
            # must not make quality look better by dropping out of the mean).
            recall_at_10=recall_at_10([] if error else results, request.relevant_ids),
            result_count=len(results),
            error=error,
            router_id=self.router_id,
            metrics=metrics or None,
            user_group=user_group(request.routing_key),
            ring=used.ring,
        )
        exact = None if request.relevant_ids or error else self.exact_for(backend, request, used.arm)
        diff = None if error else self.diff_for(request, used)
        mirror = self.mirror_for(request, used)
        if exact is not None or diff is not None or mirror is not None:
            delivery = Delivery(outcome, asyncio.get_running_loop().create_future())
            task = asyncio.create_task(self._publish_sampled(exact, diff, mirror, request, results, delivery))
            self.exact_tasks.add(task)
            task.add_done_callback(self.exact_tasks.discard)
            return results, used, delivery.ack, delivery
        try:
            ack = await self.outcomes.publish(outcome, wait_ack)
        except Exception as exc:
            if wait_ack:
                raise
            # Not even queued (the producer gave up waiting for room): handled like a failed delivery, so
            # the request is never marked done without its outcome.
            ack = asyncio.get_running_loop().create_future()
            ack.set_exception(exc)
        return results, used, ack, Delivery(outcome, ack)

    async def _exact_truth(self, exact: ExactSearchBackend, request: SearchRequest, arm: str) -> list[str]:
        """The exact top 10 (bounded by the exact timeout); [] when given up (counted)."""
        truth: list[str] = []
        try:
            async with asyncio.timeout(self._exact_timeout_s):
                answer = await exact.exact_search(request.query, request.collection, EXACT_K)
                truth = [str(x) for x in itertools.islice(answer, EXACT_K)]  # bounded, whatever it returned
            result = "measured" if truth else "empty"
        except TimeoutError:
            result = "timeout"
        except Exception as exc:
            result = "error"
            log.debug("exact search failed: %r", exc)
        finally:
            self._exact_in_flight -= 1
        self._count_exact(arm, result)
        return truth

    async def _baseline_answer(self, job: _DiffJob, request: SearchRequest) -> list[str] | None:
        """last_good's answer to the same query (bounded by the search timeout); None when given up."""
        try:
            with self._background(job.backend):
                async with asyncio.timeout(self._timeout_s):
                    answer = await job.backend.search(request.query, request.collection, job.snapshot)
                    ranked = [str(x) for x in itertools.islice(answer, EXACT_K * 4)]
            result = "measured"
        except TimeoutError:
            ranked, result = None, "timeout"
        except Exception as exc:
            ranked, result = None, "error"
            log.debug("result-diff search failed: %r", exc)
        finally:
            self._diff_in_flight -= 1
        self._count_diff(result)
        return ranked

    async def _mirrored(self, job: _MirrorJob, request: SearchRequest, served: list[str] | None) -> SearchOutcome:
        """The shadow candidate's answer to a mirrored request, as the outcome a served candidate request
        would have (latency, errors, recall against the labels, the result diff against last_good's served
        answer), marked by its ids: ``<request_id>#shadow``. No user sees this answer."""
        started = time.perf_counter()
        error: str | None = None
        ranked: list[str] = []
        try:
            with self._background(job.backend):
                async with asyncio.timeout(self._timeout_s):
                    answer = await job.backend.search(request.query, request.collection, job.candidate.snapshot)
                    ranked = [str(x) for x in itertools.islice(answer, 10_000)]
        except TimeoutError:
            error = "timeout"
        except BackendError as exc:
            error = exc.error_code
        except Exception as exc:
            error = "backend_error"
            log.debug("mirrored search failed: %r", exc)
        finally:
            self._mirror_in_flight -= 1
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._count_mirror("error" if error else "measured")
        metrics: dict[str, float] = {}
        if request.relevant_ids:
            metrics["ndcg_at_10"] = round(ndcg_at_10(ranked, request.relevant_ids) or 0.0, 6)
            metrics["mrr_at_10"] = round(mrr_at_10(ranked, request.relevant_ids) or 0.0, 6)
        if not error and served is not None:  # against last_good's served answer (none when it failed)
            metrics["rbo_at_10"] = round(rbo_at_10(ranked, served), 6)
            metrics["jaccard_at_10"] = round(jaccard_at_10(ranked, served), 6)
            metrics["top1_changed"] = top1_changed(ranked, served)
        candidate = job.candidate
        return SearchOutcome(
            event_id=f"{self.router_id}:{request.request_id}{SHADOW_SUFFIX}",
            request_id=f"{request.request_id}{SHADOW_SUFFIX}",
            ts=self.outcomes.clock(),
            deployment_id=job.deployment_id,
            config_name=candidate.name,
            config_version=candidate.version,
            config_hash=candidate.content_hash,
            arm="candidate",
            latency_ms=round(latency_ms, 3),
            recall_at_10=recall_at_10(ranked, request.relevant_ids),
            result_count=len(ranked),
            error=error,
            router_id=self.router_id,
            metrics=metrics or None,
            user_group=user_group(request.routing_key),
        )

    async def _publish_sampled(
        self,
        exact: ExactSearchBackend | None,
        diff: _DiffJob | None,
        mirror: _MirrorJob | None,
        request: SearchRequest,
        results: list[str],
        delivery: Delivery,
    ) -> None:
        """The background measurements of a sampled request, side by side, then its outcome: recall@10 of
        the served results against the exact top 10 (``recall_source: exact_sample``), and the result-diff
        metrics against last_good's answer. A measurement given up leaves its fields out. The outcome's
        ``ts`` is stamped now, so it never holds a watermark back. A mirrored request's shadow outcome is
        published beside it, and the ack waits for both (the request's offset is committed after both)."""
        arm = delivery.outcome.arm
        try:
            truth, baseline, shadow = await asyncio.gather(
                self._exact_truth(exact, request, arm) if exact is not None else _nothing(),
                self._baseline_answer(diff, request) if diff is not None else _nothing(),
                self._mirrored(mirror, request, None if delivery.outcome.error else results)
                if mirror is not None
                else _nothing(),
            )
            shadow_ack = None
            if shadow is not None:
                shadow_ack = await self.outcomes.publish(shadow, wait_ack=False)
                shadow_ack.add_done_callback(lambda fut: self._shadow_delivered(fut, shadow))
            outcome = delivery.outcome
            if truth:
                recall = recall_at_10(results, tuple(truth))
                outcome = msgspec.structs.replace(outcome, recall_at_10=recall, recall_source="exact_sample")
            if baseline is not None:
                measured = {
                    "rbo_at_10": round(rbo_at_10(results, baseline), 6),
                    "jaccard_at_10": round(jaccard_at_10(results, baseline), 6),
                    "top1_changed": top1_changed(results, baseline),
                }
                merged = {**(outcome.metrics or {}), **measured}
                if len(merged) <= MAX_OUTCOME_METRICS:  # an engine that fills the record's room keeps its own
                    outcome = msgspec.structs.replace(outcome, metrics=merged)
            delivery.outcome = msgspec.structs.replace(outcome, ts=self.outcomes.clock())
            inner = await self.outcomes.publish(delivery.outcome, wait_ack=False)
            if shadow_ack is not None:
                inner = asyncio.ensure_future(_both(inner, shadow_ack))
        except Exception as exc:  # not even queued: handled like a failed delivery
            if not delivery.ack.done():
                delivery.ack.set_exception(exc)
            return
        inner.add_done_callback(lambda fut: _settle(delivery.ack, fut))


async def _nothing() -> None:
    return None


async def _both(first: asyncio.Future[Any], second: asyncio.Future[Any]) -> Any:
    """The first's result once both are acknowledged; the first failure otherwise."""
    await asyncio.gather(first, second)
    return first.result()
