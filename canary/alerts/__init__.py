"""Alerts: webhooks on canary events (start, step, pause, inconclusive, rollback, promote, …).

``events`` turns an applied control command into an :class:`AlertEvent` (Kafka-free); ``payloads`` renders
it as Slack-compatible JSON or as generic JSON signed with HMAC-SHA256; ``dispatch`` delivers it with
retries and backoff from a bounded queue, off the decision path, auditing every attempt.
"""

from canary.alerts.dispatch import AlertDispatcher, DeliveryAttempt, check_reachable
from canary.alerts.events import AlertEvent, alert_event
from canary.alerts.payloads import SIGNATURE_HEADER, json_payload, sign, slack_payload, verify

__all__ = [
    "SIGNATURE_HEADER",
    "AlertDispatcher",
    "AlertEvent",
    "DeliveryAttempt",
    "alert_event",
    "check_reachable",
    "json_payload",
    "sign",
    "slack_payload",
    "verify",
]
