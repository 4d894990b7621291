"""The verifier an offline reader of the control topic uses: the one the services build, from the settings.

Export, reports, replay and the audit rebuild verify what they read as routers and workers do — the trusted
keys directory (``CANARY_TRUSTED_KEYS_DIR``), the environment (``CANARY_ENV``) and the control topic's name
bound into the scope — so an unsigned or forged command is not applied offline either. Unsigned lab topics
are read with the one insecure switch there is: ``CANARY_INSECURE_CONTROL=1`` or the CLI's ``--insecure``.
"""

from __future__ import annotations

from canary.security import CommandVerifier, ControlSecurity, default_verifier
from canary.settings import Settings


def verifier_for(control_topic: str, settings: Settings | None = None, *, insecure: bool = False) -> CommandVerifier:
    """A fresh verifier for a reader of ``control_topic``: the operator's view of the trusted keys, as
    ``canary status`` builds it (None: the process settings). ``insecure``: accept unsigned commands (the
    CLI's ``--insecure``; ``settings.insecure_control`` says the same)."""
    if settings is None:
        verifier = default_verifier(control_topic)
        if insecure:
            verifier.insecure = True
        return verifier
    if insecure:
        settings = settings.with_overrides(insecure_control=True)
    return ControlSecurity.operator(settings).verifier(control_topic)


def resolve(verifier: CommandVerifier | None, control_topic: str) -> CommandVerifier:
    """``verifier``, or the one the process settings describe for ``control_topic`` (secure unless they say
    insecure) — what a live service does when built without one."""
    return verifier if verifier is not None else default_verifier(control_topic)
