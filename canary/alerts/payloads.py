"""Alert bodies: Slack-compatible (``{"text": …}``) and generic JSON signed with HMAC-SHA256.

Generic JSON carries ``X-Canary-Signature: sha256=<hex HMAC of the raw body>`` and
``X-Canary-Timestamp`` (signed too: the HMAC is over ``<timestamp>.<body>``, as Stripe-style receivers
check, so a captured alert cannot be replayed later under a fresh timestamp).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from canary.alerts.events import AlertEvent
from canary.core.jsonio import dumps

SIGNATURE_HEADER = "X-Canary-Signature"
TIMESTAMP_HEADER = "X-Canary-Timestamp"
EVENT_ID_HEADER = "X-Canary-Event-Id"


def slack_payload(event: AlertEvent) -> bytes:
    emoji = {"rollback": ":rotating_light:", "promote": ":white_check_mark:", "inconclusive": ":warning:"}
    return dumps({"text": f"{emoji.get(event.kind, ':bird:')} {event.text}"})


def json_payload(event: AlertEvent, sent_at_ms: int) -> bytes:
    body: dict[str, Any] = {
        "event_id": event.event_id,
        "kind": event.kind,
        "deployment_id": event.deployment_id,
        "environment": event.environment,
        "text": event.text,
        "command": event.command,
        "sent_at_ms": sent_at_ms,
    }
    return dumps(body)


def sign(secret: str, timestamp_ms: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp_ms}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp_ms: int, body: bytes, header: str) -> bool:
    """What a receiver does (and the tests): constant-time comparison of the signature."""
    return hmac.compare_digest(sign(secret, timestamp_ms, body), header)
