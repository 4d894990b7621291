"""The router's counters, shared by its parts (control, search, intake, outcomes) and read by tests and
the service's periodic report."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RouterStats:
    requests: int = 0
    by_arm: dict[str, int] = field(default_factory=lambda: {"last_good": 0, "candidate": 0})
    errors: int = 0
    invalid_requests: int = 0
    invalid_commands: int = 0
    watermarks: int = 0  # watermark rounds sent (one record per search_results partition each)
    failsafe_requests: int = 0  # sent to last_good because the control view was stale
    control_check_failures: int = 0
    # Control records refused before the ledger saw them, by reason (canary.security.verify.REJECT_REASONS).
    rejected_commands: dict[str, int] = field(default_factory=dict)
    last_candidate_dispatch_ms: int | None = None
    # Unlabeled requests sampled for an exact search, by result: measured, or dropped (busy, timeout, error,
    # empty) — a dropped sample's outcome goes out without recall, never later than the exact timeout.
    exact_samples: dict[str, int] = field(default_factory=dict)
    diff_samples: dict[str, int] = field(default_factory=dict)  # result-diff searches by result (as exact)
    shed: dict[str, int] = field(default_factory=dict)  # requests shed by admission (error overloaded), by arm
    mirrored: dict[str, int] = field(default_factory=dict)  # shadow searches by result: measured, error, busy
    applied: list[tuple[str, str, int]] = field(default_factory=list)  # (command_id, type, applied_at_ms)
