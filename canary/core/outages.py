"""Broker outages the worker lived through, and the note a judged window carries when it overlaps one.

After the broker comes back the routers serve the requests that queued up meanwhile as fast as they can,
and both arms' latency rises for a while (measured: a 22 s outage raised candidate p95 761 → 1268 ms and
last_good 128 → 642 ms for two windows). The judge does not discount that (its attribution policy for
shocks both arms share is a later change); what this module gives is that every verdict of a window that
overlaps the outage or the backlog drain after it *says so*, with the outage's times and both arms'
measured latency, so an operator reading the verdict, the report or ``canary watch`` sees it.

Which signal, and why. The worker probes the broker itself (``streams/brokerwatch.py``: a metadata
request every second); an outage is a run of failed probes lasting at least ``min_outage_ms``, from the
first failed probe's start to the first successful probe's end. Signals in the data were considered and
rejected: ``late_count`` barely moves (the routers cannot fetch requests during an outage, so they stamp
few outcomes that could arrive late); producers leaving the live set and gaps in the routers' watermarks
look the same when one router crashes, stalls or is SIGSTOPped, and the worker's own pause in consuming
makes every producer look departed at once. The probe answers exactly "could this worker reach the
broker", distinguishes a broker outage from a router failure, and sees a hung broker (SIGSTOP: TCP
connects, nothing answers) as well as a stopped one.

The drain is not measured: its length is the routers' request backlog, which the worker cannot read (its
ACLs give it no access to the routers' consumer group). The note therefore covers the outage and
``drain_factor`` (2) times as long after it, at least ``min_drain_ms``: a backlog of D seconds of traffic
takes D·r/(C − r) to serve at capacity C, so a factor of 2 assumes the fleet has 50 % headroom
(C ≥ 1.5 r). Measured (``bench/bench_outage_notes.py``, 120 req/s on 2 shared cores): a 24 s outage drained
in about 30 s — a factor of 1 would have missed a window. Over-marking costs nothing (the note changes no
decision, and it shows both arms' latency); ``drain_until_ms`` in every note says what was assumed.

Kafka-free and clock-free: callers pass the times.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from canary.core.models import JSONDict, iso_ms

OutagePhase = Literal["outage", "drain"]
OUTAGE_PHASES: Final[tuple[OutagePhase, ...]] = ("outage", "drain")
CONTEXT_KEY: Final = "broker_outage"

DEFAULT_MIN_OUTAGE_MS: Final = 3000  # shorter gaps are a slow answer, not an outage
DEFAULT_MIN_DRAIN_MS: Final = 10_000  # two 5 s windows
DEFAULT_DRAIN_FACTOR: Final = 2.0  # drain assumed to last this many times the outage (see above)
KEPT: Final = 32  # outages remembered (a window is judged within seconds of its end; older ones never match)


@dataclass(frozen=True, slots=True)
class BrokerOutage:
    """The worker could not reach the broker from ``start_ms`` to ``end_ms`` (None: still unreachable);
    the routers' backlog drain is assumed to last until ``drain_until_ms``."""

    start_ms: int
    end_ms: int | None
    drain_until_ms: int | None

    @property
    def duration_s(self) -> float | None:
        return None if self.end_ms is None else round((self.end_ms - self.start_ms) / 1000, 1)

    def phase(self, window_start_ms: int, window_end_ms: int) -> OutagePhase | None:
        """How the window ``[window_start_ms, window_end_ms)`` meets this outage, if it does."""
        if window_end_ms <= self.start_ms:
            return None
        if self.end_ms is None or window_start_ms < self.end_ms:
            return "outage"
        if self.drain_until_ms is not None and window_start_ms < self.drain_until_ms:
            return "drain"
        return None

    def to_dict(self) -> JSONDict:
        return {
            "start_ms": self.start_ms,
            "start": iso_ms(self.start_ms),
            "end_ms": self.end_ms,
            "end": None if self.end_ms is None else iso_ms(self.end_ms),
            "duration_s": self.duration_s,
            "drain_until_ms": self.drain_until_ms,
        }

    @classmethod
    def from_dict(cls, d: Any) -> BrokerOutage | None:
        """The outage of a note, or None when ``d`` is not one (a reader never fails on a note)."""
        if not isinstance(d, Mapping):
            return None

        def ms(key: str) -> int | None:
            value = d.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

        start = ms("start_ms")
        if start is None:
            return None
        end = ms("end_ms")
        if end is not None and end < start:
            return None
        return cls(start, end, ms("drain_until_ms"))


@dataclass(frozen=True, slots=True)
class OutageNote:
    """What a judged window carries in ``context.broker_outage``: the outage, how the window meets it, and
    both arms' measured p95 in that window (last_good's when its window was in by then)."""

    outage: BrokerOutage
    phase: OutagePhase
    candidate_p95_ms: float | None = None
    last_good_p95_ms: float | None = None

    def to_dict(self) -> JSONDict:
        return {
            **self.outage.to_dict(),
            "phase": self.phase,
            "candidate_p95_ms": self.candidate_p95_ms,
            "last_good_p95_ms": self.last_good_p95_ms,
        }

    @classmethod
    def from_context(cls, context: Any) -> OutageNote | None:
        """The note in a judgement's ``context``, or None (absent, or not readable: never an error)."""
        if not isinstance(context, Mapping):
            return None
        d = context.get(CONTEXT_KEY)
        outage = BrokerOutage.from_dict(d)
        if outage is None or not isinstance(d, Mapping):
            return None
        phase = d.get("phase")
        if phase not in OUTAGE_PHASES:
            return None

        def p95(key: str) -> float | None:
            value = d.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value) if 0 <= value < float("inf") else None

        return cls(outage, phase, p95("candidate_p95_ms"), p95("last_good_p95_ms"))

    def text(self) -> str:
        """One line for terminals and logs."""
        o = self.outage
        end = "ongoing" if o.end_ms is None else iso_ms(o.end_ms)[11:19]
        took = "" if o.duration_s is None else f", {o.duration_s:g} s"
        where = "during a broker outage" if self.phase == "outage" else "in the backlog drain after a broker outage"
        arms = (
            f"p95 candidate {_ms(self.candidate_p95_ms)}, last_good {_ms(self.last_good_p95_ms)}"
            if self.candidate_p95_ms is not None or self.last_good_p95_ms is not None
            else "no latency measured"
        )
        return f"{where} ({iso_ms(o.start_ms)[11:19]}–{end}{took}): {arms}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


class OutageLog:
    """Folds probe results into outages: ``probe(ok, sent_ms, done_ms)`` after every probe."""

    def __init__(
        self,
        min_outage_ms: int = DEFAULT_MIN_OUTAGE_MS,
        min_drain_ms: int = DEFAULT_MIN_DRAIN_MS,
        drain_factor: float = DEFAULT_DRAIN_FACTOR,
        kept: int = KEPT,
    ) -> None:
        self.min_outage_ms = min_outage_ms
        self.min_drain_ms = min_drain_ms
        self.drain_factor = drain_factor
        self.kept = kept
        self.outages: list[BrokerOutage] = []  # ended ones, oldest first
        self._failing_since: int | None = None  # send time of the first failed probe of the current run
        self.ongoing = False  # the current run of failures already counts as an outage

    def probe(self, ok: bool, sent_ms: int, done_ms: int) -> Literal["began", "ended"] | None:
        """Record one probe; says when an outage began (``min_outage_ms`` of failures) or ended."""
        if not ok:
            if self._failing_since is None:
                self._failing_since = sent_ms
            if not self.ongoing and done_ms - self._failing_since >= self.min_outage_ms:
                self.ongoing = True
                return "began"
            return None
        since, self._failing_since = self._failing_since, None
        if since is None:
            return None
        if not self.ongoing and done_ms - since < self.min_outage_ms:
            return None  # a slow or lost answer, not an outage
        self.ongoing = False
        took = done_ms - since
        drain = max(round(took * self.drain_factor), self.min_drain_ms)
        self.outages.append(BrokerOutage(since, done_ms, done_ms + drain))
        del self.outages[: -self.kept]
        return "ended"

    @property
    def current(self) -> BrokerOutage | None:
        """The outage going on now, if any."""
        if not self.ongoing or self._failing_since is None:
            return None
        return BrokerOutage(self._failing_since, None, None)

    @property
    def last(self) -> BrokerOutage | None:
        return self.current or (self.outages[-1] if self.outages else None)

    def meeting(self, window_start_ms: int, window_end_ms: int) -> tuple[BrokerOutage, OutagePhase] | None:
        """The latest outage the window overlaps (or whose drain it overlaps), and how."""
        candidates = ([self.current] if self.current else []) + self.outages[::-1]
        for outage in candidates:
            assert outage is not None
            phase = outage.phase(window_start_ms, window_end_ms)
            if phase is not None:
                return outage, phase
        return None

    def note(
        self,
        window_start_ms: int,
        window_end_ms: int,
        candidate_p95_ms: float | None = None,
        last_good_p95_ms: float | None = None,
    ) -> OutageNote | None:
        met = self.meeting(window_start_ms, window_end_ms)
        if met is None:
            return None
        return OutageNote(met[0], met[1], candidate_p95_ms, last_good_p95_ms)


def merge_outages(outages: Iterable[BrokerOutage]) -> tuple[BrokerOutage, ...]:
    """One entry per outage, oldest first: the notes of many windows repeat the same outage, an early note
    may have seen it still going on, and two workers each probe it on their own clock (overlapping
    intervals are one outage: their union)."""
    merged: list[BrokerOutage] = []
    for o in sorted(outages, key=lambda o: o.start_ms):
        if merged:
            last = merged[-1]
            last_end = last.end_ms if last.end_ms is not None else last.start_ms
            if o.start_ms <= max(last_end, last.start_ms):
                ends = [e for e in (last.end_ms, o.end_ms) if e is not None]
                drains = [d for d in (last.drain_until_ms, o.drain_until_ms) if d is not None]
                merged[-1] = BrokerOutage(last.start_ms, max(ends) if ends else None, max(drains) if drains else None)
                continue
        merged.append(o)
    return tuple(merged)
