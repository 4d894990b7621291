"""The verifier an offline reader of the control topic uses: the one the services build, from the settings.

Export, reports, replay and the audit rebuild verify what they read as routers and workers do — the trusted
keys directory (``CANARY_TRUSTED_KEYS_DIR``), the environment (``CANARY_ENV``) and the control topic's name
bound into the scope — so an unsigned or forged command is not applied offline either. Unsigned lab topics
are read with the one insecure switch there is: ``CANARY_INSECURE_CONTROL=1`` or the CLI's ``--insecure``.
"""

from __future__ import annotations

import logging

from canary.security import CommandVerifier, ControlSecurity, default_verifier
from canary.settings import Settings, load_settings

log = logging.getLogger("canary.control")


def verifier_for(control_topic: str, settings: Settings | None = None, *, insecure: bool = False) -> CommandVerifier:
    """A fresh verifier for a reader of ``control_topic``, as ``canary status`` builds it: the operator's
    view of the trusted keys (``settings``; None: the process settings). ``insecure`` — the CLI's
    ``--insecure``, or ``settings.insecure_control`` — accepts unsigned commands, and says so."""
    settings = settings if settings is not None else load_settings()
    if insecure:
        settings = settings.with_overrides(insecure_control=True)
    if settings.insecure_control:
        log.warning("reading %s WITHOUT verifying signatures (insecure: an unsigned lab topic)", control_topic)
    return ControlSecurity.operator(settings).verifier(control_topic)


def resolve(verifier: CommandVerifier | None, control_topic: str) -> CommandVerifier:
    """``verifier``, or the one the process settings describe for ``control_topic`` (secure unless they say
    insecure) — what a live service does when built without one."""
    return verifier if verifier is not None else default_verifier(control_topic)
