"""A real, local Apache Kafka broker (KRaft, single combined node, loopback only).

The broker jars are resolved from Maven Central with the machine's ``mvn`` into a cache outside the
repository, so a fresh machine needs only Java 17 and Maven. Nothing here mocks Kafka: it runs the
upstream ``kafka.Kafka`` main class.

``secure=True`` (``canary kafka start --secure``) starts it with a SASL_PLAINTEXT SCRAM-SHA-512 client
listener and the KRaft ``StandardAuthorizer`` (no ACL = no access). The principals ``admin`` (super user),
``operator``, ``router`` and ``worker`` get SCRAM credentials when the storage is formatted
(``kafka-storage format --add-scram``, KRaft since Kafka 3.5); their generated passwords and a client env
file each are kept 0600 in ``<data dir>/principals``. The controller listener authenticates the broker
itself with SASL PLAIN (SCRAM credentials live in the metadata log the controller serves, so they cannot
guard it), so no unauthenticated connection gets anywhere, not even on the controller port.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from canary.errors import BrokerError
from canary.settings import KafkaSecurity

if TYPE_CHECKING:
    from canary.kafka.clients import KafkaConnection

# Newest Kafka 4.x at the time of pinning; the whole suite runs against it (see README "Kafka version").
KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"

_POM_TEMPLATE = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>canary.local</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- Kafka 4 logs through slf4j 2; pin it so Maven's nearest-wins does not pick 1.7. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2_PROPERTIES = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""

Log = Callable[[str], None]

# The secure broker's client mechanism and principals (``canary kafka start --secure``).
SECURE_MECHANISM = "SCRAM-SHA-512"
SECURE_PRINCIPALS = ("admin", "operator", "router", "worker")
_BROKER_PRINCIPAL = "broker"  # the broker itself: inter-broker (SCRAM) and to its controller (PLAIN)


def _quiet(_: str) -> None:
    return None


CONTROLLER_PORT_ATTEMPTS = 3


class _ControllerPortTaken(BrokerError):
    """Another process bound the controller port between our check and the JVM's bind."""


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What ``broker.json`` records about a started broker."""

    pid: int
    port: int
    controller_port: int
    version: str
    data_dir: str
    log_file: str
    started_at: float
    secure: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    running: bool
    bootstrap: str
    pid: int | None
    version: str
    data_dir: str
    detail: str
    secure: bool = False


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; the IANA range elsewhere)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 49152, 65535


def listen_port(low: int = 20000) -> int:
    """A free port to listen on, below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) can be taken by any outgoing connection on
    the machine in the seconds before a JVM binds it: seen in CI as "Socket server failed to bind … Address
    already in use" while many Kafka clients connected. Ports below the range are only taken by listeners."""
    top = _ephemeral_range()[0]
    rng = random.SystemRandom()
    for _ in range(200):
        candidate = rng.randrange(low, max(low + 1, top))
        if _port_is_free(candidate):
            return candidate
    raise BrokerError(f"no free port between {low} and {top} to listen on")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead so stop() does not wait forever.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state != "Z"


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Never signal a recycled pid: the command line must name kafka.Kafka and our data dir."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "kafka.Kafka" in cmdline and str(data_dir) in cmdline


def new_cluster_id() -> str:
    """A KRaft cluster id the way Kafka's ``Uuid.randomUuid()`` makes one: 16 random bytes, URL-safe base64
    without padding, drawn again if it is the zero or the metadata-topic id or begins with ``-`` (which a
    command-line parser would take for an option)."""
    while True:
        raw = secrets.token_bytes(16)
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if raw not in (bytes(16), bytes(15) + b"\x01") and not text.startswith("-"):
            return text


def registry_dir(home: Path) -> Path:
    """Where each broker canary starts is registered (``<port>.json``), so stop/status can find it."""
    return home / "brokers"


def discover_brokers(home: Path) -> list[LocalBroker]:
    """The running brokers this machine's canary started under ``home`` (registered, or in the default
    ``home/broker-PORT`` directories); stale registrations are removed."""
    found: dict[Path, LocalBroker] = {}
    candidates: list[tuple[Path, int, Path | None]] = []
    for entry in sorted(registry_dir(home).glob("*.json")):
        try:
            meta = json.loads(entry.read_text())
            candidates.append((Path(meta["data_dir"]), int(meta["port"]), entry))
        except (OSError, ValueError, KeyError, TypeError):
            candidates.append((Path("/nonexistent"), 0, entry))
    for info_file in sorted(home.glob("broker-*/broker.json")):
        try:
            meta = json.loads(info_file.read_text())
            candidates.append((info_file.parent, int(meta["port"]), None))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for data_dir, port, registration in candidates:
        broker = LocalBroker(home, port, data_dir=data_dir) if port else None
        if broker is None or broker.running_info() is None:
            if registration is not None:
                with contextlib.suppress(OSError):
                    registration.unlink()
            continue
        found.setdefault(broker.data_dir, broker)
    return sorted(found.values(), key=lambda b: b.port)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:])


class JarCache:
    """Kafka broker classpath resolved by Maven into ``<home>/kafka-<version>/libs``."""

    def __init__(self, home: Path, version: str = KAFKA_VERSION) -> None:
        self.version = version
        self.root = home / f"kafka-{version}"
        self.libs = self.root / "libs"
        self._marker = self.root / ".resolved"

    @property
    def ready(self) -> bool:
        return self._marker.exists() and any(self.libs.glob(f"kafka_{SCALA_VERSION}-*.jar"))

    def classpath(self) -> str:
        return str(self.libs / "*")

    def ensure(self, log: Log = _quiet) -> None:
        if self.ready:
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven ('mvn') is not on PATH; it is needed once to download the Kafka broker jars "
                f"(org.apache.kafka:kafka_{SCALA_VERSION}:{self.version}). Install Maven "
                "(e.g. 'apt-get install maven') or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        log(f"resolving Kafka {self.version} broker jars with Maven into {self.libs} (first run only)…")
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=self.root))
        with tempfile.TemporaryDirectory(prefix="canary-pom-") as work:
            pom = Path(work) / "pom.xml"
            pom.write_text(
                _POM_TEMPLATE.format(scala=SCALA_VERSION, kafka=self.version, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION)
            )
            cmd = [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            output = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
            raise BrokerError(
                f"Maven could not resolve org.apache.kafka:kafka_{SCALA_VERSION}:{self.version} "
                f"(exit {proc.returncode}). Is Maven Central reachable? Last output:\n" + "\n".join(output)
            )
        # Swap in atomically so a concurrent or interrupted run never sees half a classpath.
        if self.libs.exists():
            shutil.rmtree(self.libs)
        staging.rename(self.libs)
        self._marker.write_text(json.dumps({"version": self.version, "resolved_at": time.time()}))
        log(f"resolved {len(list(self.libs.glob('*.jar')))} jars")


class LocalBroker:
    """Start, stop and inspect one local KRaft broker owned by canary."""

    def __init__(
        self,
        home: Path,
        port: int,
        data_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "768m",
        secure: bool = False,
    ) -> None:
        self.home = home
        self.port = port
        self.secure = secure
        self.data_dir = (data_dir or home / f"broker-{port}").resolve()
        self.jars = JarCache(home, version)
        self.heap = heap
        self._info_file = self.data_dir / "broker.json"
        self.log_file = self.data_dir / "broker.log"
        # Held so the child is reaped by us (tests) rather than warned about by Popen.__del__.
        self._proc: subprocess.Popen[bytes] | None = None

    # -- credentials of a secure broker --------------------------------------------------------------------
    @property
    def principals_dir(self) -> Path:
        """Generated passwords (``<name>.password``) and client env files (``<name>.env``), all 0600."""
        return self.data_dir / "principals"

    def password(self, principal: str) -> str:
        path = self.principals_dir / f"{principal}.password"
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise BrokerError(
                f"no password for principal {principal!r} in {path} ({exc.strerror}); is this a broker "
                "started with 'canary kafka start --secure'?"
            ) from None

    def security(self, principal: str = "admin") -> KafkaSecurity:
        """The client settings of ``principal`` (PLAINTEXT for an insecure broker)."""
        if not self.secure:
            return KafkaSecurity()
        return KafkaSecurity(
            protocol="SASL_PLAINTEXT",
            sasl_mechanism=SECURE_MECHANISM,
            sasl_username=principal,
            sasl_password=self.password(principal),
        )

    def connection(self, principal: str = "admin") -> KafkaConnection:
        from canary.kafka.clients import KafkaConnection

        return KafkaConnection(f"127.0.0.1:{self.port}", self.security(principal))

    def env_file(self, principal: str) -> Path:
        """``set -a; . <file>; set +a`` gives a shell the canary settings of ``principal``."""
        return self.principals_dir / f"{principal}.env"

    def _ensure_passwords(self) -> None:
        self.principals_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.principals_dir, 0o700)
        for principal in (*SECURE_PRINCIPALS, _BROKER_PRINCIPAL):
            path = self.principals_dir / f"{principal}.password"
            if not path.exists():
                _write_private(path, secrets.token_urlsafe(24) + "\n")

    def client_env(self, principal: str) -> dict[str, str]:
        """The canary settings (environment variables) a process needs to connect as ``principal``."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.port}",
            "CANARY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CANARY_KAFKA_SASL_MECHANISM": SECURE_MECHANISM,
            "CANARY_KAFKA_SASL_USERNAME": principal,
            "CANARY_KAFKA_SASL_PASSWORD_FILE": str(self.principals_dir / f"{principal}.password"),
        }

    def _write_env_files(self) -> None:
        for principal in SECURE_PRINCIPALS:
            lines = [
                f"# canary client settings of {principal!r} on the secure local broker 127.0.0.1:{self.port}",
                f"# load into a shell with:  set -a; . {self.env_file(principal)}; set +a",
                *(f"{k}={shlex.quote(v)}" for k, v in self.client_env(principal).items()),
            ]
            _write_private(self.env_file(principal), "\n".join(lines) + "\n")

    # -- inspection -------------------------------------------------------------------------------------
    def info(self) -> BrokerInfo | None:
        try:
            return BrokerInfo(**json.loads(self._info_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running_info(self) -> BrokerInfo | None:
        info = self.info()
        if info and _pid_alive(info.pid) and _is_our_broker(info.pid, self.data_dir):
            return info
        return None

    def status(self) -> BrokerStatus:
        info = self.running_info()
        bootstrap = f"127.0.0.1:{self.port}"
        if info is None:
            return BrokerStatus(False, bootstrap, None, self.jars.version, str(self.data_dir), "not running")
        answering = _port_answers(info.port)
        detail = "running" if answering else "process alive but port not answering"
        if info.secure:
            detail += f" (secure: SASL_PLAINTEXT {SECURE_MECHANISM} + ACLs; client settings in {self.principals_dir})"
        return BrokerStatus(
            answering, info.bootstrap, info.pid, info.version, str(self.data_dir), detail, secure=info.secure
        )

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self, log: Log = _quiet, timeout: float = 90.0) -> BrokerInfo:
        """Start the broker, or reuse it if ours is already running; return once it answers metadata."""
        existing = self.running_info()
        if existing is not None:
            if existing.secure != self.secure:
                mode = "secure (SASL + ACLs)" if existing.secure else "insecure (PLAINTEXT)"
                raise BrokerError(
                    f"the broker on 127.0.0.1:{self.port} (pid {existing.pid}) is running {mode}; stop it first "
                    f"('canary kafka stop --port {self.port}') or use another --port"
                )
            _wait_for_metadata(self.connection(), timeout, self.log_file, existing.pid)
            self._register(existing)
            log(f"reusing running broker pid {existing.pid} at {existing.bootstrap}")
            return existing
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "'java' is not on PATH; the local Kafka broker needs Java 17+. Install a JDK "
                "(e.g. 'apt-get install openjdk-17-jre-headless') or set KAFKA_BOOTSTRAP_SERVERS."
            )
        if not _port_is_free(self.port):
            raise BrokerError(
                f"port {self.port} on 127.0.0.1 is taken by another process (not a broker canary started). "
                "Choose another with --port / CANARY_KAFKA_PORT, or point KAFKA_BOOTSTRAP_SERVERS at it "
                "if it is a Kafka you want to use."
            )
        self.jars.ensure(log)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_storage_mode()
        if self.secure:
            self._ensure_passwords()
            self._write_env_files()
        for attempt in range(1, CONTROLLER_PORT_ATTEMPTS + 1):
            controller_port = self._pick_controller_port()
            try:
                return self._launch(java, controller_port, log, timeout)
            except _ControllerPortTaken:
                if attempt == CONTROLLER_PORT_ATTEMPTS:
                    raise
                log(f"controller port {controller_port} was taken while the broker started; trying another")
        raise AssertionError("unreachable")

    def _launch(self, java: str, controller_port: int, log: Log, timeout: float) -> BrokerInfo:
        props = self._write_config(controller_port)
        self._format_storage(java, props)
        log_handle = self.log_file.open("ab")
        cmd = [
            java,
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dcanary.data.dir={self.data_dir}",
            "-cp",
            self.jars.classpath(),
            "kafka.Kafka",
            str(props),
        ]
        started = time.time()
        # A new session keeps Ctrl-C in the CLI's terminal from killing the broker mid-write;
        # `canary kafka stop` ends it deliberately.
        proc = subprocess.Popen(
            cmd, stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log_handle.close()
        self._proc = proc
        info = BrokerInfo(
            pid=proc.pid,
            port=self.port,
            controller_port=controller_port,
            version=self.jars.version,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
            started_at=started,
            secure=self.secure,
        )
        self._info_file.write_text(json.dumps(asdict(info), indent=2))
        self._register(info)
        try:
            _wait_for_metadata(self.connection(), timeout, self.log_file, proc.pid, popen=proc)
        except BrokerError as exc:
            self._kill(proc.pid)
            proc.wait(timeout=5)
            self._proc = None
            with contextlib.suppress(OSError):
                self._info_file.unlink()
            self._unregister()
            if f"failed to bind to 127.0.0.1:{controller_port}: Address already in use" in str(exc):
                raise _ControllerPortTaken(str(exc)) from exc
            raise
        log(f"Kafka {info.version} broker pid {proc.pid} ready at {info.bootstrap} in {time.time() - started:.1f}s")
        return info

    def stop(self, timeout: float = 30.0, log: Log = _quiet) -> bool:
        """Stop our broker cleanly (SIGTERM, then SIGKILL after ``timeout``). Returns whether one ran."""
        info = self.info()
        if info is None or not _pid_alive(info.pid) or not _is_our_broker(info.pid, self.data_dir):
            with contextlib.suppress(OSError):
                self._info_file.unlink()
            self._unregister()
            return False
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(info.pid):
            _reap(info.pid)
            time.sleep(0.1)
        if _pid_alive(info.pid):
            log(f"broker pid {info.pid} did not stop within {timeout:.0f}s; killing it")
            self._kill(info.pid)
        with contextlib.suppress(OSError):
            self._info_file.unlink()
        self._unregister()
        if self._proc is not None and self._proc.pid == info.pid:
            self._proc.wait(timeout=5)
            self._proc = None
        log(f"stopped broker pid {info.pid}")
        return True

    # -- internals --------------------------------------------------------------------------------------
    @property
    def _registration(self) -> Path:
        return registry_dir(self.home) / f"{self.port}.json"

    def _register(self, info: BrokerInfo) -> None:
        with contextlib.suppress(OSError):
            self._registration.parent.mkdir(parents=True, exist_ok=True)
            payload = {"port": info.port, "pid": info.pid, "data_dir": info.data_dir}
            self._registration.write_text(json.dumps(payload, indent=2))

    def _unregister(self) -> None:
        try:
            meta = json.loads(self._registration.read_text())
        except (OSError, ValueError):
            return
        if isinstance(meta, dict) and Path(str(meta.get("data_dir"))).resolve() == self.data_dir:
            with contextlib.suppress(OSError):
                self._registration.unlink()

    def _pick_controller_port(self, avoid: int | None = None) -> int:
        lo = _ephemeral_range()[0]
        for candidate in (self.port + 1, self.port + 101, self.port + 1001):
            if 0 < candidate < lo and candidate != avoid and _port_is_free(candidate):
                return candidate
        return listen_port()

    def _check_storage_mode(self) -> None:
        """A data dir keeps the mode it was formatted in: SCRAM credentials exist only if formatted secure."""
        if not (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return
        formatted_secure = self.principals_dir.exists()
        if formatted_secure != self.secure:
            was = "with" if formatted_secure else "without"
            raise BrokerError(
                f"{self.data_dir} was formatted {was} SASL credentials; start it "
                + ("with" if formatted_secure else "without")
                + " --secure, or use another --port / --data-dir (or delete that directory)"
            )

    def _security_config(self, controller_port: int) -> dict[str, str]:
        broker_password = self.password(_BROKER_PRINCIPAL)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        mechanism = SECURE_MECHANISM.lower()
        return {
            "listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": SECURE_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SECURE_MECHANISM,
            f"listener.name.sasl_plaintext.{mechanism}.sasl.jaas.config": (
                f'{scram} required username="{_BROKER_PRINCIPAL}" password="{broker_password}";'
            ),
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'{plain} required username="{_BROKER_PRINCIPAL}" password="{broker_password}" '
                f'user_{_BROKER_PRINCIPAL}="{broker_password}";'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:admin;User:{_BROKER_PRINCIPAL}",
            "allow.everyone.if.no.acl.found": "false",
            # Topics are the admin's to create ('canary kafka topics'), never a side effect of a fetch.
            "auto.create.topics.enable": "false",
        }

    def _write_config(self, controller_port: int) -> Path:
        logs = self.data_dir / "kraft-logs"
        props = self.data_dir / "server.properties"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # One node: a rebalance delay only slows every consumer group join in tests and demos.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if self.secure:
            settings.update(self._security_config(controller_port))
        # 0600: a secure broker's file holds its own password.
        _write_private(props, "".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        return props

    def _format_storage(self, java: str, props: Path) -> None:
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        cmd = [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            self.jars.classpath(),
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",  # one token: an id can never be mistaken for an option
            "-c",
            str(props),
            "--ignore-formatted",
        ]
        if self.secure:
            # SCRAM credentials go into the bootstrap metadata, so ACL'd principals exist from the first start.
            for principal in (*SECURE_PRINCIPALS, _BROKER_PRINCIPAL):
                cmd += ["--add-scram", f"{SECURE_MECHANISM}=[name={principal},password={self.password(principal)}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting KRaft storage in {self.data_dir} failed (exit {proc.returncode}):\n"
                + (proc.stdout + proc.stderr)[-3000:]
            )

    def _kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pid_alive(pid):
            _reap(pid)
            time.sleep(0.05)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (created 0600, never briefly wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _reap(pid: int) -> None:
    """Collect the exit status if the broker is our child (tests start it in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_for_metadata(
    bootstrap: str | KafkaConnection,
    timeout: float,
    log_file: Path,
    pid: int,
    popen: subprocess.Popen[bytes] | None = None,
) -> None:
    from canary.kafka.probe import metadata_answers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = popen.poll() if popen is not None else (None if _pid_alive(pid) else -1)
        if exited is not None:
            raise BrokerError(
                f"the Kafka broker exited during start (code {exited}). Last lines of {log_file}:\n" + _tail(log_file)
            )
        if metadata_answers(bootstrap, timeout=2.0):
            return
        time.sleep(0.25)
    raise BrokerError(
        f"the Kafka broker at {bootstrap} did not answer metadata requests within {timeout:.0f}s. "
        f"Last lines of {log_file}:\n" + _tail(log_file)
    )


def main_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
