"""Property tests: no record of any topic, no HTTP body and no file line can make a decoder, the verifier,
the ledger fold, the registry, the CLI view, the dashboard, the judge or the audit raise anything but its
typed rejection (issue #19). Hostile values come from devtools/hostile.py; hypothesis drives its seeded
``random``, so every run explores the same examples unless ``CANARY_FUZZ_EXAMPLES`` asks for more (then
it also explores afresh)."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary.config.yamlfile import parse_yaml_text
from canary.control import ControlOutcome
from canary.control.audit import outcome_event
from canary.core import wire
from canary.core.deployment import ControlLedger, snapshot_hash
from canary.core.judge import Judgement
from canary.core.merge import WindowMerger, decode_merge_record, parse_merge_record
from canary.core.models import ControlCommand, RouterState, WindowResult
from canary.core.windows import WindowFinalizer
from canary.dashboard.feed import AuditTail, Changes, DashboardState, _fold
from canary.errors import CanaryError
from canary.kafka.topics import Topics
from canary.ops.view import fold
from canary.pipeline.decisions import DecisionStep
from canary.pipeline.decode import OutcomeDecoder
from canary.pipeline.policies import PolicyBook
from canary.replay.dumpfile import LineError, parse_line
from canary.reports.files import read_audit_file
from canary.security.verify import REJECT_REASONS, Verdict
from devtools import hostile
from devtools.signing import OPERATOR, T0, rollback, start, verifier
from router.backends.base import BackendError
from router.backends.http import parse_response
from router.service import decode_request
from streams.registry import DeploymentRegistry

EXPLORE = int(os.environ.get("CANARY_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int) -> settings:
    """``examples`` per property in CI (derandomized: the same examples every run); CANARY_FUZZ_EXAMPLES=N
    explores N fresh ones per property."""
    return settings(
        max_examples=EXPLORE or examples,
        derandomize=not EXPLORE,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


FUZZ = fuzz(150)
SAMPLES = hostile.samples()
TOPICS = Topics("fuzz.")


def records(kind: str) -> st.SearchStrategy[bytes | None]:
    """Hostile values derived from the valid samples of ``kind``."""
    return st.builds(
        lambda rng, sample: hostile.hostile(rng, sample),
        st.randoms(use_true_random=False),
        st.sampled_from(SAMPLES[kind]),
    )


def any_records() -> st.SearchStrategy[bytes | None]:
    return st.sampled_from(sorted(SAMPLES)).flatmap(records)


def signed_hostile_commands() -> st.SearchStrategy[dict[str, Any]]:
    """Commands a trusted operator key signed over hostile content: verification passes the signature, so
    the content checks and the ledger fold must hold on their own. A start, then others of the same
    deployment, one field each replaced by any JSON (or a snapshot section by any JSON, hash recomputed)."""

    def build(rng: random.Random) -> dict[str, Any]:
        base = rng.choice([start, rollback, _set_weight, _pause])().to_dict()
        if base["candidate_config"] is not None and rng.random() < 0.5:
            section = rng.choice([*sorted(base["candidate_config"]), "rollout", "backend"])
            base["candidate_config"][section] = hostile._random_json(rng)
            base["candidate_config_hash"] = snapshot_hash(base["candidate_config"])
        else:
            base[
                rng.choice(["evidence", "reason", "weight", "type", "deployment_id", "issued_by", "last_good_config"])
            ] = hostile._random_json(rng)
        base["command_id"] = f"{base['command_id']}-{rng.randrange(10**6)}"
        return OPERATOR.sign(base)

    return st.builds(build, st.randoms(use_true_random=False))


def _set_weight() -> ControlCommand:
    return ControlCommand.from_dict({**rollback().to_dict(), "type": "set_weight", "command_id": "w", "weight": 0.2})


def _pause() -> ControlCommand:
    return ControlCommand.from_dict({**rollback().to_dict(), "type": "pause", "command_id": "p"})


# -- the decoder ---------------------------------------------------------------------------------------------
@FUZZ
@given(any_records(), st.sampled_from([wire.CONTROL, wire.OUTCOME, wire.PARTIAL, wire.HTTP_BODY, wire.RECORD]))
def test_the_decoder_returns_bounded_json_or_a_typed_rejection(raw: bytes | None, limits: wire.Limits) -> None:
    try:
        value = wire.decode(raw, limits)
    except wire.Rejected as exc:
        assert exc.code in wire.REJECT_CODES
        return
    assert raw is not None and len(raw) <= limits.max_bytes
    assert _depth(value) <= limits.max_depth


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=40,
)


@FUZZ
@given(JSON)
def test_depth_scan_is_exact_for_json(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False), json.dumps(value, indent=1)):
        assert wire.depth_of(text.encode()) == _depth(value)


# -- every topic's decoding ------------------------------------------------------------------------------------
@FUZZ
@given(records("outcome"))
def test_outcome_decoder_rejects_with_a_code(raw: bytes | None) -> None:
    for strict in (False, True):
        try:
            OutcomeDecoder(strict=strict).decode(raw)
        except wire.Rejected as exc:
            assert exc.code in wire.REJECT_CODES


@FUZZ
@given(records("request"))
def test_request_decoding_rejects_with_a_code(raw: bytes | None) -> None:
    try:
        decode_request(raw)
    except wire.Rejected as exc:
        assert exc.code in wire.REJECT_CODES


MODELS = {
    "window": (wire.WINDOW, WindowResult.from_dict),
    "judgement": (wire.JUDGEMENT, Judgement.from_dict),
    "partial": (wire.PARTIAL, parse_merge_record),
    "state": (wire.ROUTER_STATE, RouterState.from_dict),
    "control": (wire.CONTROL, ControlCommand.from_dict),
    "checkpoint": (wire.CHECKPOINT, lambda d: WindowFinalizer.from_dict(d, now_ms=T0)),
}


@FUZZ
@given(st.sampled_from(sorted(MODELS)).flatmap(lambda kind: st.tuples(st.just(kind), records(kind))))
def test_models_refuse_hostile_records_with_invalid_event(case: tuple[str, bytes | None]) -> None:
    kind, raw = case
    limits, parse = MODELS[kind]
    try:
        model = parse(wire.decode_object(raw, limits))
    except CanaryError:  # wire.Rejected or InvalidEvent: the contract's refusal
        return
    # Whatever a model accepted can be written again (a timestamp beyond year 9999 once got through and
    # stopped the audit's formatter).
    if hasattr(model, "to_dict"):
        json.dumps(model.to_dict())


@pytest.mark.parametrize("field", ["issued_at_ms", "window_start_ms", "ts", "applied_at_ms", "watermark_ms"])
@pytest.mark.parametrize("value", [10**30, 2**63, -(2**63), 253_402_300_800_000])
def test_timestamps_beyond_what_iso_8601_can_write_are_refused(field: str, value: int) -> None:
    for kind in ("control", "window", "state", "outcome"):
        _, parse = MODELS.get(kind, (wire.OUTCOME, lambda d: OutcomeDecoder().decode(json.dumps(d).encode())))
        for sample in SAMPLES[kind]:
            if field not in sample:
                continue
            with pytest.raises(CanaryError):
                parse({**sample, field: value})


@FUZZ
@given(records("partial"))
def test_the_merger_takes_any_parsed_record_or_refuses_it(raw: bytes | None) -> None:
    merger = WindowMerger(3)
    try:
        item = decode_merge_record(raw)  # the merge step's reader: the typed pass, else the reference
    except CanaryError:
        with pytest.raises(CanaryError):
            parse_merge_record(wire.decode_object(raw, wire.PARTIAL))
        return
    assert item == parse_merge_record(wire.decode_object(raw, wire.PARTIAL))
    try:
        merger.add(item)
    except CanaryError:
        return
    merger.due(T0 + 10**9)


@fuzz(80)
@given(st.lists(records("window"), min_size=1, max_size=4))
def test_the_judge_takes_any_parsed_window(raws: list[bytes | None]) -> None:
    ledger = ControlLedger()
    ledger.apply(ControlCommand.from_dict(SAMPLES["control"][0]))
    step = DecisionStep(PolicyBook(ledger), lambda: ledger)
    for raw in [*(json.dumps(w).encode() for w in SAMPLES["window"]), *raws]:
        try:
            window = WindowResult.from_dict(wire.decode_object(raw, wire.WINDOW))
        except CanaryError:
            continue
        step.observe(window, T0 + 10**6)
        step.tick(T0 + 10**7)


def _judge_checkpoints() -> list[dict[str, Any]]:
    """Checkpoints the SLO agent writes: one captured at da5b9c6 (an older shape it still reads) and today's,
    of a judge that has judged the sample windows (decisive windows, streaks, last_good's recent windows)."""
    ledger = ControlLedger()
    ledger.apply(ControlCommand.from_dict(SAMPLES["control"][0]))
    step = DecisionStep(PolicyBook(ledger), lambda: ledger)
    for w in SAMPLES["window"]:
        step.observe(WindowResult.from_dict(w), T0 + 10**6)
    step.tick(T0 + 10**7)
    today = [state for dep in list(step.judge.deployments) if (state := step.state(dep)) is not None]
    older = json.loads((Path(__file__).parents[1] / "fixtures" / "judge_checkpoint_da5b9c6.json").read_text())
    return [older, *today]


JUDGE_CHECKPOINTS = _judge_checkpoints()


@FUZZ
@given(
    st.builds(
        lambda rng, sample: hostile.hostile(rng, sample),
        st.randoms(use_true_random=False),
        st.sampled_from(JUDGE_CHECKPOINTS),
    )
)
def test_a_judge_checkpoint_restores_and_judges_on_or_is_refused(raw: bytes | None) -> None:
    """The SLO agent's table entry is read back after a restart or rebalance: whatever it holds, the restore
    refuses it with InvalidEvent (the deployment's judge then starts afresh) or yields a judge that judges on
    and checkpoints to what it restores from."""
    ledger = ControlLedger()
    ledger.apply(ControlCommand.from_dict(SAMPLES["control"][0]))
    step = DecisionStep(PolicyBook(ledger), lambda: ledger)
    try:
        step.restore("d1", wire.decode_object(raw, wire.CHECKPOINT))
    except CanaryError:
        return
    for dep in list(step.judge.deployments):
        written = step.state(dep)
        again = DecisionStep(PolicyBook(ledger), lambda: ledger)
        again.restore(dep, written)
        assert again.state(dep) == written
    for w in SAMPLES["window"]:
        step.observe(WindowResult.from_dict(w), T0 + 2 * 10**6)
    step.tick(T0 + 10**8)


# -- the control plane -------------------------------------------------------------------------------------------
@fuzz(100)
@given(st.lists(records("control") | signed_hostile_commands(), min_size=1, max_size=6))
def test_verifier_ledger_registry_view_and_dashboard_never_raise(raws: list[Any]) -> None:
    """Every reader of the control topic folds the same records to a verdict each, whatever they hold."""
    values = [json.dumps(OPERATOR.sign_command(start())).encode()]  # a live deployment for the others to hit
    values += [r if r is None or isinstance(r, bytes) else json.dumps(r, allow_nan=True).encode() for r in raws]
    v = verifier()
    ledger = ControlLedger()
    for raw in values:
        verdict = v.check(raw, T0 + 10)
        assert isinstance(verdict, Verdict)
        assert verdict.accepted or verdict.reason in REJECT_REASONS
        if verdict.accepted and verdict.command is not None:
            ledger.apply(verdict.command)
        outcome_event(ControlOutcome(0, verdict, verdict.accepted, "note", T0), raw)  # the audit line
    registry = DeploymentRegistry("unused:9092", "control", verifier=verifier())
    for offset, raw in enumerate(values):
        registry.apply_raw(raw, offset, T0 + 10)
    fold(values, verifier(), [T0 + 10] * len(values))
    state = DashboardState(verifier())
    for offset, raw in enumerate(values):
        _fold(state, TOPICS, TOPICS.control, _Record(raw, offset), Changes())


class _Record:
    def __init__(self, value: bytes | None, offset: int) -> None:
        self.value = value
        self.offset = offset
        self.timestamp = T0 + 10


@fuzz(80)
@given(st.sampled_from(["window", "judgement", "state"]).flatmap(records))
def test_dashboard_counts_poison_on_the_data_topics(raw: bytes | None) -> None:
    state = DashboardState(verifier())
    for topic in (TOPICS.windows, TOPICS.verdicts, TOPICS.state):
        _fold(state, TOPICS, topic, _Record(raw, 0), Changes())


# -- files and HTTP bodies ---------------------------------------------------------------------------------------
@fuzz(40)
@given(st.lists(any_records(), min_size=1, max_size=5))
def test_audit_readers_skip_hostile_lines(tmp_path_factory: pytest.TempPathFactory, raws: list[bytes | None]) -> None:
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    lines = [(r or b"").replace(b"\n", b" ") + b"\n" for r in raws]
    path.write_bytes(b"".join(lines))
    read_audit_file(path)
    AuditTail(path).read_new()
    from streams.audit import AuditLog

    AuditLog(path)  # rebuilds its ids from the file at start


@FUZZ
@given(any_records())
def test_dump_lines_are_refused_with_a_line_error(raw: bytes | None) -> None:
    with contextlib.suppress(LineError):
        parse_line((raw or b"").replace(b"\n", b" "), 1)


@FUZZ
@given(any_records())
def test_http_answers_are_refused_as_bad_responses(raw: bytes | None) -> None:
    try:
        parse_response(raw or b"", 10)
    except BackendError as exc:
        assert exc.error_code == "backend_bad_response"


YAML_BOMBS = [
    "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n",
    "[" * 5000 + "]" * 5000,
    "{a: " * 5000 + "1" + "}" * 5000,
    "- " * 3000 + "x",
]


@fuzz(60)
@given(
    st.sampled_from(YAML_BOMBS)
    | st.text(max_size=2000)
    | any_records().map(lambda r: (r or b"").decode("utf-8", "replace"))
)
def test_yaml_text_is_parsed_or_refused(text: str) -> None:
    _data, error = parse_yaml_text(text, "fuzz.yaml")
    assert error is None or "fuzz.yaml" in str(error)
