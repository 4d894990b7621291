"""Issuing control commands as an operator: validate, produce, wait for the routers' acknowledgement.

A command is only "done" when every live router has published a state answering it. If none answers
in time, a ``start`` is compensated by an ``abort`` so no half-started canary is left behind.

Every command is signed with the operator key (``canary keys init``) before it is produced; a command the
routers rejected (e.g. a key they do not trust) is reported with the reason instead of a bare timeout.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from canary.config import Preset
from canary.core import wire
from canary.core.deployment import ConfigRef
from canary.core.models import CommandType, ControlCommand, RouterState
from canary.errors import CanaryError, ConfigError, DeploymentError, KafkaError
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.topics import Topics
from canary.ops.view import ControlView, read_view_async
from canary.security import CommandSigner, ControlSecurity
from canary.settings import Settings

if TYPE_CHECKING:
    from canary.config.environments import Environment

log = logging.getLogger("canary.ops")

Via = Literal["cli", "api"]
"""Who asks: refusals say how to proceed in the asker's own terms (a flag, or a keyword argument)."""

HOW: Final[dict[Via, dict[str, str]]] = {
    "cli": {
        "parallel": "--parallel",
        "pick": "--deployment ID",
        "end": "canary stop --promote | --rollback",
        "end_one": "canary stop --deployment {id} --promote | --rollback",
        "end_each": "canary stop --deployment ID --promote | --rollback, for each",
        "weight": "--weight {w}",
        "no_weight": "leave --weight out",
        "mirror": "--shadow --mirror {m}",
    },
    "api": {
        "parallel": "start_canary(..., parallel=True)",
        "pick": "deployment_id=ID",
        "end": "stop_canary(promote=True | False)",
        "end_one": "stop_canary(deployment_id={id!r}, promote=True | False)",
        "end_each": "stop_canary(deployment_id=ID, promote=True | False) for each",
        "weight": "weight={w!r}",
        "no_weight": "leave weight out",
        "mirror": "mirror={m!r}",
    },
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:unknown"


def new_deployment_id() -> str:
    """The spec's style: canary_<epoch seconds>_<4 digits>."""
    return f"canary_{int(time.time())}_{random.randint(0, 9999):04d}"


@dataclass(frozen=True, slots=True)
class Ack:
    command: ControlCommand
    acked_by: list[str]
    waited_for: list[str]
    elapsed_ms: int
    compensated: bool = False
    rejected: str | None = None  # why the control topic's readers refused the command, if they did

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command.command_id,
            "type": self.command.type,
            "deployment_id": self.command.deployment_id,
            "acked_by": self.acked_by,
            "waited_for": self.waited_for,
            "elapsed_ms": self.elapsed_ms,
            "compensated": self.compensated,
            "rejected": self.rejected,
        }


def signed_payload(cmd: ControlCommand, signer: CommandSigner | None) -> dict[str, Any]:
    return signer.sign_command(cmd) if signer is not None else cmd.to_dict()


def precheck(security: ControlSecurity, topics: Topics, payload: dict[str, Any]) -> str | None:
    """What this machine's trusted keys say about ``payload`` before it is sent (a warning, or None)."""
    verdict = security.verifier(topics.control).check(payload, record=False)
    if verdict.accepted:
        return None
    return f"this machine's own verification would reject the command: {verdict.message}"


async def produce_command(
    bootstrap: Cluster, topics: Topics, cmd: ControlCommand, signer: CommandSigner | None = None
) -> None:
    """Produce ``cmd``, signed by ``signer`` (None: unsigned — only insecure readers accept it), which must be
    bound to ``topics.control`` (``ControlSecurity.signer(topics.control)``): readers refuse another scope."""
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks="all", enable_idempotence=True)
    try:
        await asyncio.wait_for(producer.start(), 10)
    except Exception as exc:
        raise KafkaError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        value = json.dumps(signed_payload(cmd, signer)).encode()
        await producer.send_and_wait(topics.control, value, key=cmd.deployment_id.encode())
    finally:
        await producer.stop()


async def _wait_for_acks(
    bootstrap: Cluster, topics: Topics, command_id: str, routers: list[str], timeout: float
) -> list[str]:
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    acked: set[str] = set()
    try:
        tp = TopicPartition(topics.state, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not set(routers) <= acked:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        state = RouterState.from_dict(wire.decode_object(record.value, wire.ROUTER_STATE))
                    except CanaryError:  # another writer's junk on the state topic: not an acknowledgement
                        continue
                    if state.answers_command_id == command_id:
                        acked.add(state.router_id)
    finally:
        await consumer.stop()
    return sorted(acked)


async def issue(
    bootstrap: Cluster,
    topics: Topics,
    cmd: ControlCommand,
    view: ControlView,
    timeout: float,
    security: ControlSecurity,
) -> Ack:
    routers = sorted(s.router_id for s in view.live_routers())
    signer = security.signer(topics.control)
    warning = precheck(security, topics, signed_payload(cmd, signer))
    if warning:
        log.warning("%s", warning)
    started = time.monotonic()
    await produce_command(bootstrap, topics, cmd, signer)
    acked = await _wait_for_acks(bootstrap, topics, cmd.command_id, routers, timeout) if routers else []
    rejected = None
    if not set(routers) <= set(acked):
        # Did the readers of the control topic refuse it? Fold it as they do and say why.
        verdict = (await read_view_async(bootstrap, topics, verifier=security.verifier(topics.control))).rejection(
            cmd.command_id
        )
        rejected = verdict.message if verdict is not None else None
    return Ack(cmd, acked, routers, int((time.monotonic() - started) * 1000), rejected=rejected)


def _command(kind: CommandType, deployment_id: str, issued_by: str | None = None, **fields: Any) -> ControlCommand:
    base: dict[str, Any] = {
        "candidate_config": None,
        "candidate_config_hash": None,
        "last_good_config": None,
        "weight": None,
        "reason": None,
        "evidence": None,
    }
    base.update(fields)
    return ControlCommand(
        command_id=f"{kind}-{uuid.uuid4().hex[:12]}",
        type=kind,
        deployment_id=deployment_id,
        issued_by=issued_by or operator(),
        issued_at_ms=now_ms(),
        **base,
    )


DEFAULT_MIN_LAST_GOOD_SHARE = 0.5


def check_side_by_side(
    live: list[Any],
    candidate: Preset,
    weight: float,
    min_last_good_share: float,
    *,
    parallel: bool = False,
    via: Via = "cli",
) -> None:
    """May ``candidate`` start at ``weight`` beside the running canaries? DeploymentError if not.

    One canary at a time unless the operator asks for several (``parallel``: A/B/n) — a second start that
    merely forgot the first one is refused, as the spec's troubleshooting expects. A preset runs at most once
    at a time, even with ``parallel``: a second copy would only split the same experiment's users and its
    evidence. Several candidates may run at once, each on its own users, as long as last_good keeps at least
    ``min_last_good_share`` of traffic. A rollout plan walks up to its last step, so a candidate with a plan
    runs alone: it neither starts beside others nor lets others start beside it."""
    if not live:
        return
    how = HOW[via]
    names = ", ".join(f"{d.deployment_id} ({d.candidate.name}, weight {d.weight:g}, {d.status})" for d in live)
    same = next((d for d in live if d.candidate.name == candidate.name), None)
    if same is not None:
        raise DeploymentError(
            f"{candidate.name} is already running as {same.deployment_id} (weight {same.weight:g}, {same.status}); "
            "a preset runs at most once at a time (a second copy would only split the same experiment's users "
            f"and its evidence). End it first: {how['end_one'].format(id=same.deployment_id)}"
        )
    if not parallel:
        raise DeploymentError(
            f"{'a canary is' if len(live) == 1 else f'{len(live)} canaries are'} already running: {names}. "
            f"Starting {candidate.name} would run another one beside {'it' if len(live) == 1 else 'them'}. "
            f"End {'it' if len(live) == 1 else 'them'} first "
            f"({how['end'] if len(live) == 1 else how['end_each']}), "
            f"or ask for several candidates at once with {how['parallel']}"
        )
    if candidate.rollout is not None:
        raise DeploymentError(
            f"{candidate.name} has a rollout plan, which runs alone; running now: {names}. Stop those first"
        )
    planned = [d for d in live if d.candidate.snapshot.get("rollout")]
    if planned:
        raise DeploymentError(
            f"{planned[0].deployment_id} ({planned[0].candidate.name}) follows a rollout plan, which runs alone; "
            "wait for it to end or stop it"
        )
    left = 1.0 - sum(d.weight for d in live) - weight
    if left < min_last_good_share - 1e-9:
        raise DeploymentError(
            f"starting {candidate.name} at {weight:g} beside {names} would leave last_good {max(left, 0):.2f} of "
            f"traffic, under the minimum {min_last_good_share:g} (CANARY_MIN_LAST_GOOD_SHARE)"
        )


async def require_passed_in(bootstrap: Cluster, earlier: Settings, preset_name: str, preset_hash: str) -> ConfigRef:
    """A promotion pipeline's gate: the same preset hash must have been promoted in the earlier environment
    (read from that environment's own control topic and verified with its own trusted keys)."""
    topics = Topics(earlier.topic_prefix)
    # Staging's own keys and scope: its commands were signed for its topic.
    view = await read_view_async(bootstrap, topics, verifier=ControlSecurity.operator(earlier).verifier(topics.control))
    for dep in sorted(view.ledger.deployments.values(), key=lambda d: d.started_at_ms, reverse=True):
        stamp = dep.candidate.snapshot.get("environment")
        stamped = stamp.get("preset_hash") if isinstance(stamp, dict) else dep.candidate.content_hash
        if stamped == preset_hash and dep.status == "promoted":
            return dep.candidate
    raise DeploymentError(
        f"preset {preset_name} (hash {preset_hash}) has not passed a canary in environment "
        f"'{earlier.environment}': no promoted deployment of it on {topics.control}; run it there first "
        f"(canary --env {earlier.environment} start {preset_name})"
    )


async def start_canary(
    bootstrap: Cluster,
    topics: Topics,
    candidate: Preset,
    default_last_good: Preset,
    weight: float = 0.10,
    timeout: float = 10.0,
    require_router: bool = True,
    *,
    security: ControlSecurity,
    min_last_good_share: float = DEFAULT_MIN_LAST_GOOD_SHARE,
    parallel: bool = False,
    via: Via = "cli",
    mirror: float | None = None,
) -> Ack:
    """Start a canary of ``candidate``: refused while another runs unless ``parallel`` (see
    :func:`check_side_by_side`); withdrawn with an abort if the live routers do not acknowledge in time.
    ``weight`` 0 with a ``mirror`` share starts it in shadow (docs/contracts.md, "Shadow traffic")."""
    view = await read_view_async(bootstrap, topics, verifier=security.verifier(topics.control))
    check_side_by_side(view.ledger.live, candidate, weight, min_last_good_share, parallel=parallel, via=via)
    if require_router and not view.live_routers():
        raise DeploymentError(
            "no live router (none published a heartbeat in the last 15 s); start one with 'canary router'"
        )
    fallback = ConfigRef.from_snapshot(default_last_good.to_dict(), default_last_good.content_hash)
    last_good = view.last_good(fallback)
    assert last_good is not None
    cmd = _command(
        "start",
        new_deployment_id(),
        candidate_config=candidate.to_dict(),
        candidate_config_hash=candidate.content_hash,
        last_good_config=last_good.snapshot,
        weight=weight,
        mirror=mirror or None,
        reason=f"start canary of {candidate.name} {candidate.version}"
        + (f", in shadow: {mirror:g} of last_good's requests mirrored" if mirror else ""),
    )
    ack = await issue(bootstrap, topics, cmd, view, timeout, security)
    if ack.waited_for and not set(ack.waited_for) <= set(ack.acked_by):
        # Nothing may stay half-applied: withdraw the start everywhere.
        abort = _command("abort", cmd.deployment_id, reason="start not acknowledged by every router in time")
        await produce_command(bootstrap, topics, abort, security.signer(topics.control))
        return Ack(cmd, ack.acked_by, ack.waited_for, ack.elapsed_ms, compensated=True, rejected=ack.rejected)
    return ack


@dataclass(frozen=True, slots=True)
class StartRequest:
    """What a start sends, resolved from the preset store and the environment before Kafka is contacted."""

    candidate: Preset  # the environment's overrides applied
    last_good: Preset  # the preset store's last_good (the baseline when no deployment ever ran)
    weight: float
    environment: Environment | None
    mirror: float | None = None  # a shadow start: weight 0, this share of last_good's requests mirrored


DEFAULT_MIRROR: Final = 0.10


async def prepare_start(
    settings: Settings,
    name: str,
    weight: float | None = None,
    via: Via = "cli",
    *,
    shadow: bool = False,
    mirror: float | None = None,
) -> StartRequest:
    """The candidate ``name`` as it would start here, with its weight: the one path of ``canary start`` and
    the Python API, so both apply the environment's overrides and checks alike. ConfigError (exit 2) names
    what is wrong: an unknown or invalid preset, ``last_good`` itself, a weight the plan contradicts or out
    of (0, 1], an alert target the environment cannot reach. ``shadow`` (or a ``mirror`` share, default 0.10)
    starts it at weight 0 with that share of last_good's requests mirrored to it; a preset whose plan starts
    with a shadow step starts so by itself."""
    from canary.config import PresetStore

    store = PresetStore(settings.presets_dir)
    candidate = store.get(name)
    if candidate.name == "last_good":
        raise ConfigError("'last_good' is the baseline; start a candidate preset instead (see 'canary list')")
    env = None
    if settings.environment is not None:
        from canary.config.environments import apply_environment, load_environment

        env = load_environment(settings.environments_dir, settings.environment)
        candidate = apply_environment(candidate, env)
    plan = candidate.rollout
    if plan is not None:
        # The plan decides the weights; a contradicting weight would start it off its first step.
        if weight is not None and abs(weight - plan.weights[0]) > 1e-9:
            raise ConfigError(
                f"{HOW[via]['weight'].format(w=weight)}: preset {candidate.name} has a rollout plan starting at "
                f"{plan.weights[0]:g} ({' → '.join(f'{w:g}' for w in plan.weights)}); {HOW[via]['no_weight']} or "
                "edit rollout.steps"
            )
        if (shadow or mirror is not None) and not plan.steps[0].shadow:
            raise ConfigError(
                f"{HOW[via]['mirror'].format(m=mirror or DEFAULT_MIRROR)}: preset {candidate.name} has a rollout plan "
                f"starting at {plan.weights[0]:g}; give its first step weight 0 and a mirror share for a shadow step"
            )
        weight = plan.weights[0]
        mirror = plan.steps[0].mirror or None
    elif shadow or mirror is not None:
        if weight is not None:
            raise ConfigError(
                f"{HOW[via]['weight'].format(w=weight)}: a shadow start serves no user (weight 0); "
                f"{HOW[via]['no_weight']}"
            )
        weight = 0.0
        mirror = DEFAULT_MIRROR if mirror is None else mirror
        if isinstance(mirror, bool) or not isinstance(mirror, int | float) or not 0 < mirror <= 1:
            raise ConfigError(f"{HOW[via]['mirror'].format(m=mirror)}: the mirror share must be a number in (0, 1]")
    elif weight is None:
        weight = env.weight if env is not None and env.weight is not None else 0.10
    shadow_start = weight == 0 and mirror
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not (0 < weight <= 1 or shadow_start):
        raise ConfigError(f"{HOW[via]['weight'].format(w=weight)}: must be a number in (0, 1]")
    if env is not None and env.alerts:
        from canary.alerts import check_reachable

        problems = await check_reachable(env.alerts)
        if problems:
            raise ConfigError(f"{env.source}: " + "; ".join(problems) + " — fix the file or start the receiver")
    return StartRequest(candidate, store.get("last_good"), float(weight), env, float(mirror) if mirror else None)


async def start_prepared(
    settings: Settings,
    bootstrap: Cluster,
    request: StartRequest,
    timeout: float = 10.0,
    *,
    security: ControlSecurity,
    require_router: bool = True,
    parallel: bool = False,
    via: Via = "cli",
) -> Ack:
    """Issue a start prepared by :func:`prepare_start`: the environment's promotion gate first (the same
    preset hash promoted in the earlier environment), then :func:`start_canary`."""
    env = request.environment
    if env is not None and env.requires_passed_in is not None:
        stamp = request.candidate.environment
        assert stamp is not None  # apply_environment stamped it
        await require_passed_in(
            bootstrap, settings.sibling(env.requires_passed_in), request.candidate.name, stamp.preset_hash
        )
    return await start_canary(
        bootstrap,
        Topics(settings.topic_prefix),
        request.candidate,
        request.last_good,
        weight=request.weight,
        timeout=timeout,
        require_router=require_router,
        security=security,
        min_last_good_share=settings.min_last_good_share,
        parallel=parallel,
        via=via,
        mirror=request.mirror,
    )


def _running(view: ControlView, kind: str, expected: str | None, via: Via = "cli") -> str:
    """The running deployment's id; DeploymentError if none runs or it is not the ``expected`` one (an
    operator acting on what a screen showed must not hit a deployment started since)."""
    live = view.ledger.live
    if not live:
        raise DeploymentError(f"no canary is running; nothing to {kind} ('canary status' shows the last one)")
    ids = [d.deployment_id for d in live]
    if expected is not None:
        if expected not in ids:
            raise DeploymentError(f"{expected} is not a running canary (running: {', '.join(ids)}); not sent")
        return expected
    if len(live) > 1:
        raise DeploymentError(
            f"{len(live)} canaries are running ({', '.join(ids)}); say which to {kind} with {HOW[via]['pick']}"
        )
    return ids[0]


async def stop_canary(
    bootstrap: Cluster,
    topics: Topics,
    promote: bool,
    timeout: float = 10.0,
    *,
    security: ControlSecurity,
    issued_by: str | None = None,
    deployment_id: str | None = None,
    reason: str | None = None,
    via: Via = "cli",
) -> Ack:
    """Promote or roll back the running canary. ``issued_by`` defaults to ``cli:<user>``; with
    ``deployment_id`` the command is sent only if that deployment is a running one (without it, only if
    exactly one runs). A rollback with no canary running reverts a promotion still in its bake
    (canary.core.bake): its previous last_good serves again."""
    view = await read_view_async(bootstrap, topics, verifier=security.verifier(topics.control))
    kind: CommandType = "promote" if promote else "rollback"
    who = issued_by or operator()
    baking = _baking(view) if not promote else None
    if baking is not None and deployment_id in (None, baking.deployment_id) and not view.ledger.live:
        assert baking.previous_last_good is not None
        why = reason or f"manual revert of the promotion by {who}; {baking.previous_last_good.name} serves again"
        cmd = _command(kind, baking.deployment_id, issued_by=who, reason=why, weight=0.0)
        return await issue(bootstrap, topics, cmd, view, timeout, security)
    target = _running(view, "stop", deployment_id, via)
    cmd = _command(kind, target, issued_by=who, reason=reason or f"manual {kind} by {who}", weight=0.0)
    return await issue(bootstrap, topics, cmd, view, timeout, security)


def _baking(view: ControlView) -> Any:
    """The promoted deployment still in its bake whose config serves now, if any."""
    ledger = view.ledger
    now = now_ms()
    for dep in ledger.deployments.values():
        if (
            dep.baking(now)
            and ledger.last_good is not None
            and dep.candidate.content_hash == ledger.last_good.content_hash
        ):
            return dep
    return None


async def simple_command(
    bootstrap: Cluster,
    topics: Topics,
    kind: CommandType,
    weight: float | None = None,
    timeout: float = 10.0,
    *,
    security: ControlSecurity,
    issued_by: str | None = None,
    deployment_id: str | None = None,
    reason: str | None = None,
    via: Via = "cli",
) -> Ack:
    """pause / resume / set_weight on the running canary (``issued_by``, ``deployment_id``: as in
    :func:`stop_canary`)."""
    view = await read_view_async(bootstrap, topics, verifier=security.verifier(topics.control))
    target = _running(view, kind, deployment_id, via)
    who = issued_by or operator()
    cmd = _command(kind, target, issued_by=who, weight=weight, reason=reason or f"{kind} by {who}")
    return await issue(bootstrap, topics, cmd, view, timeout, security)
