"""The one exception tree of the canary package.

Everything the package raises on purpose derives from :class:`CanaryError`; only the CLI maps these to
exit codes, so library users can catch one base class.
"""

from __future__ import annotations


class CanaryError(Exception):
    """Base of every error canary raises deliberately."""


class ConfigError(CanaryError):
    """A preset or setting is invalid. Message names the file, field, value and reason."""


class PresetNotFound(ConfigError):
    """An unknown preset name was asked for."""


class InvalidEvent(CanaryError):
    """A message on a topic does not match its contract (poison message)."""


class KafkaError(CanaryError):
    """Kafka is unreachable or misbehaves."""


class ProducerFailed(KafkaError):
    """No producer can deliver any more and a new one cannot be started (not an outage: the broker refuses)."""


class BrokerError(KafkaError):
    """The local broker could not be provisioned, started or stopped."""


class TopicMismatch(KafkaError):
    """A topic exists with settings other than the ones declared."""


class DeploymentError(CanaryError):
    """A canary command is not valid in the current deployment state."""


SHAPE_ERRORS: tuple[type[Exception], ...] = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError)
"""What building a model from parsed but hostile JSON can raise (a list where an object belongs, an infinity
where an integer belongs …): every ``from_dict`` turns these into :class:`InvalidEvent`."""
