"""Kafka security settings, the client kwargs built from them and the ACL matrix — no Kafka needed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from canary.errors import ConfigError
from canary.kafka.acls import acl_plan, topics_of
from canary.kafka.clients import KafkaConnection, client_kwargs, faust_credentials
from canary.kafka.topics import Topics, default_replication_factor
from canary.settings import KafkaSecurity, load_settings

ROOT = Path(__file__).resolve().parent.parent

SCRAM = {
    "CANARY_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
    "CANARY_KAFKA_SASL_MECHANISM": "scram-sha-512",
    "CANARY_KAFKA_SASL_USERNAME": "router",
}


def test_default_is_plaintext_and_services_create_topics() -> None:
    settings = load_settings({})
    assert settings.kafka_security == KafkaSecurity()
    assert settings.services_create_topics
    assert settings.replication_factor is None
    assert client_kwargs("127.0.0.1:9092") == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert faust_credentials("127.0.0.1:9092") is None


def test_scram_with_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "router.password"
    secret.write_text("s3cret-value\n")
    settings = load_settings(
        {**SCRAM, "CANARY_KAFKA_SASL_PASSWORD_FILE": str(secret), "KAFKA_BOOTSTRAP_SERVERS": "h:1"}
    )
    security = settings.kafka_security
    assert (security.protocol, security.sasl_mechanism, security.sasl_password) == (
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
        "s3cret-value",
    )
    assert "s3cret" not in repr(settings)  # never in logs or tracebacks
    assert not settings.services_create_topics  # a secured cluster: services only verify
    conn = KafkaConnection(settings.effective_bootstrap, security)
    assert str(conn) == "h:1"
    assert client_kwargs(conn) == {
        "bootstrap_servers": "h:1",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "router",
        "sasl_plain_password": "s3cret-value",
    }
    from faust.auth import SASLCredentials

    creds = faust_credentials(conn)
    assert isinstance(creds, SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value, creds.protocol.value) == (
        "router",
        "s3cret-value",
        "SCRAM-SHA-512",
        "SASL_PLAINTEXT",
    )


def _self_signed_ca(path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canary test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_ssl_builds_a_verifying_context(tmp_path: Path) -> None:
    import ssl

    ca = tmp_path / "ca.pem"
    _self_signed_ca(ca)
    settings = load_settings({"CANARY_KAFKA_SECURITY_PROTOCOL": "SSL", "CANARY_KAFKA_SSL_CAFILE": str(ca)})
    kwargs = client_kwargs(KafkaConnection("h:1", settings.kafka_security))
    assert kwargs["security_protocol"] == "SSL"
    context = kwargs["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "canary test CA"),),)]
    from faust.auth import SSLCredentials

    assert isinstance(faust_credentials(KafkaConnection("h:1", settings.kafka_security)), SSLCredentials)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CANARY_KAFKA_SECURITY_PROTOCOL": "SASL"}, "CANARY_KAFKA_SECURITY_PROTOCOL = 'SASL': must be one of"),
        ({"CANARY_KAFKA_SASL_USERNAME": "u"}, "CANARY_KAFKA_SASL_USERNAME set but CANARY_KAFKA_SECURITY_PROTOCOL"),
        ({"CANARY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "CANARY_KAFKA_SASL_MECHANISM is required"),
        ({**SCRAM, "CANARY_KAFKA_SASL_MECHANISM": "GSSAPI"}, "CANARY_KAFKA_SASL_MECHANISM = 'GSSAPI'"),
        ({**SCRAM, "CANARY_KAFKA_SASL_USERNAME": ""}, "CANARY_KAFKA_SASL_USERNAME is required"),
        (SCRAM, "a SASL password is required for user 'router'"),
        (
            {**SCRAM, "CANARY_KAFKA_SASL_PASSWORD": "a", "CANARY_KAFKA_SASL_PASSWORD_FILE": "/x"},
            "both CANARY_KAFKA_SASL_PASSWORD and CANARY_KAFKA_SASL_PASSWORD_FILE",
        ),
        ({**SCRAM, "CANARY_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "'/nonexistent/pw': cannot read it"),
        ({"CANARY_KAFKA_SSL_CAFILE": "/etc/hosts"}, "CANARY_KAFKA_SSL_CAFILE set but CANARY_KAFKA_SECURITY_PROTOCOL"),
        (
            {"CANARY_KAFKA_SECURITY_PROTOCOL": "SSL", "CANARY_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "CANARY_KAFKA_SSL_CAFILE = '/nonexistent/ca.pem': no such file",
        ),
        (
            {"CANARY_KAFKA_SECURITY_PROTOCOL": "SSL", "CANARY_KAFKA_SSL_KEYFILE": "/etc/hosts"},
            "CANARY_KAFKA_SSL_KEYFILE set without CANARY_KAFKA_SSL_CERTFILE",
        ),
        ({"CANARY_KAFKA_REPLICATION_FACTOR": "three"}, "CANARY_KAFKA_REPLICATION_FACTOR = 'three'"),
        ({"CANARY_KAFKA_REPLICATION_FACTOR": "0"}, "must be between 1 and 32"),
        ({"CANARY_KAFKA_CREATE_TOPICS": "maybe"}, "CANARY_KAFKA_CREATE_TOPICS = 'maybe'"),
    ],
)
def test_bad_security_settings_say_which_and_why(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(env)


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_settings({**SCRAM, "CANARY_KAFKA_SASL_PASSWORD_FILE": str(empty)})


def test_replication_and_topic_creation_settings() -> None:
    settings = load_settings({"CANARY_KAFKA_REPLICATION_FACTOR": "2", "CANARY_KAFKA_CREATE_TOPICS": "no"})
    assert settings.replication_factor == 2 and not settings.services_create_topics
    assert [default_replication_factor(n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]


def test_the_acl_matrix_is_least_privilege() -> None:
    topics = Topics("p.")
    plan = acl_plan(topics)

    def who(topic: str, operation: str) -> set[str]:
        return {b.principal for b in plan if b.resource_name == topic and b.operation == operation}

    assert who(topics.control, "WRITE") == {"User:operator", "User:worker"}  # only operators and the SLO agent
    assert who(topics.control, "READ") == {"User:operator", "User:worker", "User:router"}
    assert who(topics.search_results, "WRITE") == {"User:router"}
    assert who(topics.state, "WRITE") == {"User:router"}
    for worker_only in (topics.windows, topics.window_partials, topics.verdicts, topics.window_state):
        assert who(worker_only, "WRITE") == {"User:worker"}
    assert who(topics.search_requests, "READ") == {"User:router"}
    # Describe is never granted alone: revoking Read must hide the topic's end offsets too.
    assert not [b for b in plan if b.operation in ("DESCRIBE", "ALL", "ALTER", "DELETE")]
    assert {b.operation for b in plan if b.resource_type == "TOPIC" and b.pattern == "PREFIXED"} == {
        "CREATE",
        "READ",
        "WRITE",
        "DESCRIBE_CONFIGS",
    }
    assert {b.resource_name for b in plan if b.pattern == "PREFIXED"} == {"p.canary-streams", "p.canary-streams-"}
    # The stages' transactional producers: their ids, and nothing else a transaction could write under.
    assert [(b.principal, b.resource_name, b.operation) for b in plan if b.resource_type == "TRANSACTIONAL_ID"] == [
        ("User:worker", "p.canary-streams", "WRITE")
    ]
    assert set(topics_of(topics, "router")) == {
        topics.search_requests,
        topics.search_results,
        topics.control,
        topics.state,
        topics.responses,
        topics.requests_dlq,
    }


CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}


def _client_calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in CLIENTS or (name == "App" and isinstance(func, ast.Attribute)):
                calls.append((name, node))
    return calls


def _uses(call: ast.Call, helper: str, keyword: str | None) -> bool:
    for kw in call.keywords:
        value = kw.value
        is_helper = isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == helper
        if is_helper and kw.arg == keyword:
            return True
    return False


def test_every_kafka_client_is_built_from_client_kwargs() -> None:
    """No client may be forgotten: each one in the product, the benchmarks and the dev tooling they call
    (devtools/) takes its connection settings (address, SASL, SSL) from canary.kafka.clients."""
    offenders = []
    checked = 0
    for package in ("canary", "router", "streams", "bench", "devtools"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for name, call in _client_calls(ast.parse(path.read_text())):
                checked += 1
                ok = (
                    _uses(call, "faust_credentials", "broker_credentials")
                    if name == "App"
                    else _uses(call, "client_kwargs", None)
                    # A consumer's kwargs carry read_committed on top (canary.kafka.clients.consumer_kwargs).
                    or (name == "AIOKafkaConsumer" and _uses(call, "consumer_kwargs", None))
                )
                if not ok:
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}: {name}(…)")
    assert checked >= 20  # the scan finds the clients at all
    assert not offenders, "Kafka clients not built from canary.kafka.clients:\n" + "\n".join(offenders)
