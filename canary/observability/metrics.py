"""Every Prometheus metric canary exports, in one place (docs/contracts.md, "Metrics").

One :class:`~prometheus_client.CollectorRegistry` per service object, never the library's global one: a
test process may run several routers side by side, and each must report only its own numbers. Label sets
that are known in advance (arms, reject reasons, decision types) are created at zero, so a rate() over a
series that has not moved yet still exists.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from canary.core.models import OUTCOMES
from canary.core.wire import DEAD_LETTER_REASONS
from canary.security import REJECT_REASONS

ARMS = ("last_good", "candidate")
COMMAND_TYPES = ("start", "rollback", "promote", "abort", "pause", "resume", "set_weight")
PUBLISH_KINDS = ("outcome", "state", "watermark", "dlq", "reply")
# Seconds from a window's end to its emission: grace (1 s) plus the slowest producer's watermark.
WINDOW_LAG_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)


class RouterMetrics:
    """What one router counts (``canary router --metrics-port``)."""

    def __init__(self, router_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("canary_router", "Identity of this router", registry=r).info({"router_id": router_id})
        self.requests = Counter("canary_router_requests", "Requests routed, by arm", ["arm"], registry=r)
        self.outcomes = Counter(
            "canary_router_outcomes",
            "Outcomes the broker acknowledged, by arm and result (ok, or the error kind)",
            ["arm", "result"],
            registry=r,
        )
        self.failsafe_requests = Counter(
            "canary_router_failsafe_requests",
            "Requests of a running canary sent to last_good because the control view was stale",
            registry=r,
        )
        self.publish_errors = Counter(
            "canary_router_publish_errors",
            "Records the producer failed to deliver (outcomes and states are retried), by kind",
            ["kind"],
            registry=r,
        )
        self.redelivered_outcomes = Counter(
            "canary_router_outcomes_redelivered",
            "Outcomes sent again after a failed delivery",
            registry=r,
        )
        self.producer_replacements = Counter(
            "canary_router_producer_replacements",
            "Producers replaced in-process after a failed delivery (e.g. OutOfOrderSequenceNumber after a restart)",
            registry=r,
        )
        self.commands_applied = Counter(
            "canary_router_commands_applied", "Control commands applied, by type", ["type"], registry=r
        )
        self.commands_rejected = Counter(
            "canary_router_commands_rejected",
            "Control records refused by verification, never applied, by reason (canary.security.verify)",
            ["reason"],
            registry=r,
        )
        self.dlq = Counter(
            "canary_router_dlq_records", "Records this router dead-lettered, by reason", ["reason"], registry=r
        )
        self.exact_samples = Counter(
            "canary_router_exact_samples",
            "Unlabeled requests sampled for an exact search, by arm and result (measured; busy, timeout, error or"
            " empty: dropped, the outcome goes out without recall)",
            ["arm", "result"],
            registry=r,
        )
        self.diff_samples = Counter(
            "canary_router_diff_samples",
            "Candidate requests sampled for a result diff against last_good's answer, by result (measured; busy,"
            " timeout or error: dropped, the outcome goes out without the result-diff metrics)",
            ["result"],
            registry=r,
        )
        self.mirrored = Counter(
            "canary_router_mirrored_requests",
            "Requests of a shadow deployment mirrored to its candidate, by result (measured; error: the candidate"
            " failed, its outcome says how; busy: dropped, no slot free)",
            ["result"],
            registry=r,
        )
        self.shed = Counter(
            "canary_router_shed_requests",
            "Requests shed by the router's admission (error overloaded): the arm's search slots and queue were"
            " full, or the request waited its longest (router/admission.py)",
            ["arm"],
            registry=r,
        )
        self.control_lag = Gauge(
            "canary_router_control_lag_seconds",
            "Seconds since the router last confirmed it had read the control topic to its end",
            registry=r,
        )
        self.failsafe = Gauge(
            "canary_router_failsafe", "1 while the control view is stale and all traffic goes to last_good", registry=r
        )
        self.in_flight = Gauge(
            "canary_router_requests_in_flight",
            "Requests taken from Kafka whose outcome is not acknowledged yet",
            registry=r,
        )
        self.intake_stalled = Gauge(
            "canary_router_request_intake_stalled",
            "1 while the router holds search_requests partitions with requests waiting and takes none",
            registry=r,
        )
        self.request_consumer_renewals = Counter(
            "canary_router_request_consumer_renewals",
            "Times a stalled search_requests consumer was replaced by a fresh group member",
            registry=r,
        )
        for arm in ARMS:
            self.requests.labels(arm)
            self.outcomes.labels(arm, "ok")
        for kind in PUBLISH_KINDS:
            self.publish_errors.labels(kind)
        for cmd in COMMAND_TYPES:
            self.commands_applied.labels(cmd)
        for reason in REJECT_REASONS:
            self.commands_rejected.labels(reason)
        for dlq_reason in DEAD_LETTER_REASONS:
            self.dlq.labels(dlq_reason)

    def bind(
        self,
        control_lag: Callable[[], float],
        failsafe: Callable[[], float],
        in_flight: Callable[[], float],
    ) -> None:
        """Gauges read from the live service at scrape time (no bookkeeping on the hot path)."""
        self.control_lag.set_function(control_lag)
        self.failsafe.set_function(failsafe)
        self.in_flight.set_function(in_flight)


class WorkerMetrics:
    """What one streams worker counts (``canary worker --metrics-port``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.outcomes = Counter(
            "canary_worker_outcomes", "Outcomes the windows stage consumed (without watermark records)", registry=r
        )
        self.late_outcomes = Counter(
            "canary_worker_late_outcomes", "Outcomes that arrived after their window closed", registry=r
        )
        self.duplicate_outcomes = Counter(
            "canary_worker_duplicate_outcomes", "Outcomes of a request already counted (dropped)", registry=r
        )
        self.partials_emitted = Counter(
            "canary_worker_partial_windows_emitted", "Partial windows the windows stage emitted", registry=r
        )
        self.windows_emitted = Counter(
            "canary_worker_windows_emitted", "Merged windows emitted to canary_windows", registry=r
        )
        self.window_lag = Histogram(
            "canary_worker_window_emit_lag_seconds",
            "Seconds from a window's end to its emission by the merge step",
            buckets=WINDOW_LAG_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            "canary_worker_verdicts", "Rule verdicts of judged candidate windows, by outcome", ["outcome"], registry=r
        )
        self.judgements = Counter("canary_worker_judgements", "Candidate windows judged", registry=r)
        self.decisions = Counter(
            "canary_worker_decisions",
            "Decisions of the SLO agent, by type and whether a command was issued",
            ["type", "issued"],
            registry=r,
        )
        self.commands_applied = Counter(
            "canary_worker_commands_applied", "Control commands the registry applied, by type", ["type"], registry=r
        )
        self.commands_refused = Counter(
            "canary_worker_commands_refused",
            "Verified control commands the deployment ledger refused (e.g. a start while another runs), by type",
            ["type"],
            registry=r,
        )
        self.commands_rejected = Counter(
            "canary_worker_commands_rejected",
            "Control records refused by verification, by reason (canary.security.verify)",
            ["reason"],
            registry=r,
        )
        self.dlq = Counter(
            "canary_worker_dlq_records",
            "Records the worker dead-lettered (outcomes, partials, windows, router states), by reason",
            ["reason"],
            registry=r,
        )
        self.audit_lines = Counter(
            "canary_worker_audit_lines", "Lines durably written to the audit log, by source", ["source"], registry=r
        )
        self.audit_write_failures = Counter(
            "canary_worker_audit_write_failures", "Failed audit write attempts (each is retried)", registry=r
        )
        self.audit_stuck = Gauge(
            "canary_worker_audit_stuck_seconds",
            "Seconds the audit agent has been retrying its pending line (0 when writing)",
            registry=r,
        )
        self.control_lag = Gauge(
            "canary_worker_control_lag_seconds",
            "Seconds since the worker's registry last confirmed it had read the control topic to its end",
            registry=r,
        )
        for outcome in OUTCOMES:
            self.verdicts.labels(outcome)
        for kind in ("rollback", "pause"):
            for issued in ("true", "false"):
                self.decisions.labels(kind, issued)
        for cmd in COMMAND_TYPES:
            self.commands_applied.labels(cmd)
        for reason in REJECT_REASONS:
            self.commands_rejected.labels(reason)
        for dlq_reason in DEAD_LETTER_REASONS:
            self.dlq.labels(dlq_reason)
        for source in ("control", "state"):
            self.audit_lines.labels(source)
