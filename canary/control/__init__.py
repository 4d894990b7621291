"""The control plane's one reader: every process that reads the control topic goes through here.

Read to the end (:mod:`.reading`), check freshness with a throttled log (:mod:`.freshness`), verify then
fold into the ledger with one typed outcome per record (:mod:`.fold`, :mod:`.outcome`), and the audit line
of each outcome (:mod:`.audit`). Routers, the worker's registry and audit agent, the CLI's view and the
dashboard use it live; export, reports, replay and the audit rebuild use it offline, verifying with the
trusted keys as the services do (:mod:`.security`; ``CANARY_INSECURE_CONTROL`` / ``--insecure`` for unsigned
lab topics). :mod:`.records` verifies the control records handed to the decision pipeline
(``run_pipeline(..., verify_control=VerifyControl())``); import it from there — it brings in the pipeline,
which a router does not need. docs/contracts.md ("Verification") has who reads the topic and how.
"""

from canary.control.fold import ControlFold, ControlHistory, RawControl, fold_records
from canary.control.freshness import Freshness, throttled
from canary.control.outcome import OUTCOME_STATUSES, ControlOutcome, OutcomeStatus, slim_command, slimmed
from canary.control.reading import LogRecord, catch_up, read_log, read_records, read_topic
from canary.control.security import resolve, verifier_for

__all__ = [
    "OUTCOME_STATUSES",
    "ControlFold",
    "ControlHistory",
    "ControlOutcome",
    "Freshness",
    "LogRecord",
    "OutcomeStatus",
    "RawControl",
    "catch_up",
    "fold_records",
    "read_log",
    "read_records",
    "read_topic",
    "resolve",
    "slim_command",
    "slimmed",
    "throttled",
    "verifier_for",
]
