"""What a private Kafka node is told: server.properties for KRaft combined mode, and its log4j2 config.

Defaults suit tests: one process is broker and controller, everything on loopback, groups join at
once, internal topics have one partition and the cluster's replication, topics are only created on
purpose, and the log cleaner and retention react within a second when a topic asks them to (tiny
``segment.ms``, ``min.cleanable.dirty.ratio``, ``delete.retention.ms``).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLIENT_LISTENER = "PLAINTEXT"
CONTROLLER_LISTENER = "CONTROLLER"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class Listener:
    """An extra listener beside the node's PLAINTEXT client listener and its CONTROLLER listener.

    ``properties`` are listener-scoped broker settings, written as
    ``listener.name.<name in lower case>.<key>=<value>``: keystores, ``sasl.enabled.mechanisms``,
    a ``<mechanism>.sasl.jaas.config``. ``port`` 0 takes a free port when the node is created.
    """

    name: str
    security_protocol: str = "PLAINTEXT"
    properties: Mapping[str, str] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name.upper() != self.name:
            raise ValueError(f"listener name {self.name!r}: upper-case letters, digits and _ only")
        if self.name in (CLIENT_LISTENER, CONTROLLER_LISTENER):
            raise ValueError(f"listener name {self.name!r} is the node's own; choose another")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security protocol {self.security_protocol!r}: one of {SECURITY_PROTOCOLS}")


def new_cluster_id() -> str:
    """A fresh cluster id as `kafka-storage random-uuid` makes it: 16 random bytes, base64url."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids ids that read as a command-line option
            return text


def tuned_for_tests(cluster_size: int) -> dict[str, str]:
    """Broker settings tuned for tests on a cluster of ``cluster_size`` nodes (any may be overridden)."""
    replicas = str(cluster_size)
    min_isr = str(min(2, cluster_size))
    return {
        "num.partitions": "1",
        "default.replication.factor": replicas,
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        # tests run workers with short group sessions (a killed member is noticed in seconds);
        # Kafka's own floor is 6 s
        "group.min.session.timeout.ms": "1000",
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "share.coordinator.state.topic.num.partitions": "1",
        # the cleaner looks for dirty logs every 100 ms; a small dedupe buffer fits a small heap
        "log.cleaner.enable": "true",
        "log.cleaner.threads": "1",
        "log.cleaner.backoff.ms": "100",
        "log.cleaner.dedupe.buffer.size": str(8 << 20),
        # retention and segment deletion act within a second, from the first second on
        "log.initial.task.delay.ms": "0",
        "log.retention.check.interval.ms": "1000",
        "log.segment.delete.delay.ms": "1000",
        "file.delete.delay.ms": "1000",
        # a small machine shared with other tests: few threads
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "num.replica.fetchers": "1",
        # a starting broker is unfenced at its first heartbeat after catching up, and a broker
        # killed with SIGKILL can register again once its old session has expired (9 s by default)
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "4000",
    }


def server_properties(
    *,
    node_id: int,
    ports: Mapping[str, int],
    voters: Mapping[int, int],
    log_dir: Path,
    listeners: Sequence[Listener] = (),
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The complete server.properties of one combined node.

    ``ports`` maps listener names (PLAINTEXT, CONTROLLER and each extra one) to this node's ports;
    ``voters`` maps every node id of the cluster to its CONTROLLER port (the static quorum).
    """
    names = [CLIENT_LISTENER, *(listener.name for listener in listeners)]
    protocols = {CLIENT_LISTENER: "PLAINTEXT", CONTROLLER_LISTENER: "PLAINTEXT"}
    protocols.update({listener.name: listener.security_protocol for listener in listeners})
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(f"{n}@127.0.0.1:{port}" for n, port in sorted(voters.items())),
        "listeners": ",".join(f"{n}://127.0.0.1:{ports[n]}" for n in [*names, CONTROLLER_LISTENER]),
        "advertised.listeners": ",".join(f"{n}://127.0.0.1:{ports[n]}" for n in names),
        "listener.security.protocol.map": ",".join(f"{n}:{p}" for n, p in protocols.items()),
        "controller.listener.names": CONTROLLER_LISTENER,
        "inter.broker.listener.name": CLIENT_LISTENER,
        "log.dirs": str(log_dir),
        **tuned_for_tests(len(voters)),
    }
    for listener in listeners:
        prefix = f"listener.name.{listener.name.lower()}."
        props.update({prefix + key: value for key, value in listener.properties.items()})
    props.update(overrides or {})
    return props


def render_properties(props: Mapping[str, str]) -> str:
    """Java .properties text, escaped as Properties.load (ISO-8859-1, as Kafka reads it) expects."""
    return "".join(f"{_escape(k, key=True)}={_escape(v, key=False)}\n" for k, v in props.items())


def _escape(text: str, *, key: bool) -> str:
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[ch])
        elif (key and ch in "=: #!") or (i == 0 and ch == " "):
            out.append("\\" + ch)
        elif ord(ch) > 0x7E or ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else _surrogates(ch))
        else:
            out.append(ch)
    return "".join(out)


def _surrogates(ch: str) -> str:
    units = ch.encode("utf-16-be")
    return "".join(f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2))


# one readable log: everything to stdout (the service writes it to <workdir>/node-N/kafka.log),
# without the thousand-line config dumps (server.properties beside the log says what was set),
# and still in this layout while the broker shuts down (Kafka stops log4j itself, last)
LOG4J2_PROPERTIES = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""
