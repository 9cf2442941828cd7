"""Whether this client may talk to Kafka and do what its role needs: checked at start, one line if not.

aiokafka logs why a connection failed (an untrusted certificate, a refused SASL login) and then
raises only "Unable to bootstrap"; a missing ACL shows up later, deep inside a consumer or a
producer. :func:`check_access` connects once itself, so it can name the cause, then asks the
brokers which operations the principal may do on each topic it needs (Metadata v8, KIP-430) and on
its consumer group (FindCoordinator, DescribeGroups v3), and raises :class:`KafkaAccessError`
naming what is missing.

The check runs when a security protocol is configured (not ``PLAINTEXT``: there is no principal to
authorize then). Brokers that cannot report authorized operations are not checked for permissions;
a permission they refuse later still stops the replica (see :mod:`worker.pipeline.produce`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IncompatibleBrokerVersion,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.protocol.coordination import FindCoordinatorRequest

from worker.config import ENV_PREFIX, Settings
from worker.kafka_client import client_options
from worker.kafka_metadata import (
    OPERATIONS_UNKNOWN,
    AuthorizedOperationsRequest,
    GroupOperationsRequest,
    group_operations,
    topic_operations,
)

logger = logging.getLogger(__name__)

TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
#: a connection attempt of the check waits at most this long (a wrong port must not hang a start)
CONNECT_TIMEOUT_MS = 15_000


class KafkaAccessError(Exception):
    """Kafka refuses this client (TLS, SASL or a missing ACL); the message is one line naming why."""


class Operation(IntEnum):
    """Kafka's ACL operation codes; bit ``1 << code`` of an authorized-operations set."""

    READ = 3
    WRITE = 4
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10


@dataclass(frozen=True)
class Need:
    """One operation on one resource that a role cannot do without."""

    resource: Literal["topic", "group"]
    name: str
    operation: Operation

    def __str__(self) -> str:
        return f"{self.operation.name} on {self.resource} {self.name!r}"


def worker_needs(settings: Settings) -> tuple[Need, ...]:
    """A serving replica: reads queries and the mutation log (and its retention), writes intents
    and dead letters, and is a member of its group. Nothing else."""
    return (
        Need("topic", settings.topic_queries, Operation.READ),
        Need("topic", settings.topic_mutations, Operation.READ),
        Need("topic", settings.topic_mutations, Operation.DESCRIBE_CONFIGS),
        Need("topic", settings.topic_intents, Operation.WRITE),
        Need("topic", settings.topic_dlq, Operation.WRITE),
        Need("group", settings.group_id, Operation.READ),
    )


def publisher_needs(settings: Settings) -> tuple[Need, ...]:
    """`routes apply|delete|calibrate`: reads the mutation log to plan, writes it to publish."""
    return (
        Need("topic", settings.topic_mutations, Operation.READ),
        Need("topic", settings.topic_mutations, Operation.WRITE),
    )


def log_reader_needs(settings: Settings) -> tuple[Need, ...]:
    """`routes list`: reads the mutation log."""
    return (Need("topic", settings.topic_mutations, Operation.READ),)


async def check_access(settings: Settings, needs: Sequence[Need] = ()) -> None:
    """Connect (TLS, SASL) and check ``needs``; raise :class:`KafkaAccessError` naming the first cause."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return
    options = _options(settings)
    conn = await _connect(settings, options)
    try:
        await _check_topics(conn, settings, [n for n in needs if n.resource == "topic"])
        await _check_groups(conn, settings, options, [n for n in needs if n.resource == "group"])
    finally:
        conn.close()
    logger.info("Kafka access checked: %s may do what it needs", principal(settings))


def principal(settings: Settings) -> str:
    """Who the brokers see: the SASL user, or the subject of the client certificate."""
    if settings.kafka_security_protocol.startswith("SASL"):
        return f"User:{settings.kafka_sasl_username}"
    return "the principal of the client certificate" if settings.kafka_ssl_certfile else "User:ANONYMOUS"


def _options(settings: Settings) -> dict[str, Any]:
    try:
        return client_options(settings)
    except (OSError, ssl.SSLError) as error:  # the CA, certificate or key file
        files = ", ".join(
            f"{ENV_PREFIX}{name.upper()}={value}"
            for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
            if (value := getattr(settings, name)) is not None
        )
        raise KafkaAccessError(f"TLS: cannot load {files}: {_describe(error)}") from None


async def _connect(settings: Settings, options: dict[str, Any]) -> AIOKafkaConnection:
    causes: list[str] = []
    for host, port in _hosts(settings.kafka_bootstrap):
        try:
            return await _open(options, host, port)
        except (OSError, KafkaError, TimeoutError) as error:
            causes.append(_connection_cause(settings, f"{host}:{port}", error))
            logger.debug("cannot connect to %s:%d: %s", host, port, causes[-1])
    raise KafkaAccessError(causes[0] if causes else f"no bootstrap server in {settings.kafka_bootstrap!r}")


async def _open(options: dict[str, Any], host: str, port: int) -> AIOKafkaConnection:
    return await create_conn(
        host,
        port,
        client_id=options["client_id"],
        request_timeout_ms=min(options["request_timeout_ms"], CONNECT_TIMEOUT_MS),
        ssl_context=options.get("ssl_context"),
        security_protocol=options["security_protocol"],
        sasl_mechanism=options.get("sasl_mechanism"),
        sasl_plain_username=options.get("sasl_plain_username"),
        sasl_plain_password=options.get("sasl_plain_password"),
    )


def _connection_cause(settings: Settings, address: str, error: BaseException) -> str:
    protocol = settings.kafka_security_protocol
    if isinstance(error, ssl.SSLCertVerificationError):
        cafile = settings.kafka_ssl_cafile or "unset (the system's CAs)"
        return (
            f"TLS: the certificate of {address} is not trusted ({error.verify_message}); "
            f"{ENV_PREFIX}KAFKA_SSL_CAFILE={cafile} must hold the CA that signed it"
        )
    if isinstance(error, ssl.SSLError):
        reason = error.reason or _describe(error)
        return f"TLS handshake with {address} failed ({reason}); is it a TLS listener?"
    if isinstance(error, (SaslAuthenticationFailed, AuthenticationFailedError)):
        return (
            f"SASL authentication of User:{settings.kafka_sasl_username} ({settings.kafka_sasl_mechanism}) "
            f"refused by {address}: wrong user name or password ({_describe(error)})"
        )
    if isinstance(error, UnsupportedSaslMechanismError):
        return f"{address} does not offer SASL mechanism {settings.kafka_sasl_mechanism} ({_describe(error)})"
    if isinstance(error, TimeoutError):
        return (
            f"no answer from {address} within {CONNECT_TIMEOUT_MS // 1000} s: does "
            f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} match that listener?"
        )
    if isinstance(error, KafkaError):
        return (
            f"{address} closed the connection ({_describe(error)}): does "
            f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} match that listener?"
        )
    return f"cannot connect to {address}: {_describe(error)}"


async def _check_topics(conn: AIOKafkaConnection, settings: Settings, needs: list[Need]) -> None:
    if not needs:
        return
    try:
        response = await conn.send(AuthorizedOperationsRequest(sorted({n.name for n in needs})))
    except (IncompatibleBrokerVersion, NotImplementedError) as error:
        logger.warning("the brokers do not report topic permissions (%s): not checked at start", error)
        return
    found = topic_operations(response)
    missing = [need for need in needs if _denied(need, *found.get(need.name, (0, OPERATIONS_UNKNOWN)))]
    _refuse(settings, missing)


async def _check_groups(
    conn: AIOKafkaConnection, settings: Settings, options: dict[str, Any], needs: list[Need]
) -> None:
    missing = []
    for need in needs:
        try:
            coordinator = await _coordinator(conn, need.name)
            if coordinator is None:  # not even DESCRIBE: FindCoordinator refused
                missing.append(need)
                continue
            same = coordinator == (conn.host, conn.port)
            target = conn if same else await _open(options, *coordinator)
            try:
                found = group_operations(await target.send(GroupOperationsRequest([need.name])))
            finally:
                if not same:
                    target.close()
        except (IncompatibleBrokerVersion, NotImplementedError) as error:
            logger.warning("the brokers do not report group permissions (%s): not checked at start", error)
            return
        if _denied(need, *found.get(need.name, (0, OPERATIONS_UNKNOWN)), refused=GROUP_AUTHORIZATION_FAILED):
            missing.append(need)
    _refuse(settings, missing)


async def _coordinator(conn: AIOKafkaConnection, group: str) -> tuple[str, int] | None:
    """The group coordinator's address; None when the principal may not even describe the group."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_MS / 1000
    while True:
        response = await conn.send(FindCoordinatorRequest(group, 0))
        code = int(response.get_item("error_code"))
        if code == GROUP_AUTHORIZATION_FAILED:
            return None
        if code == 0:
            return str(response.get_item("host")), int(response.get_item("port"))
        error = for_code(code)
        # a coordinator still loading (the offsets topic is created on first use): wait for it
        if not error.retriable or time.monotonic() > deadline:
            raise KafkaAccessError(f"cannot find the coordinator of group {group!r}: {error.__name__}")
        await asyncio.sleep(0.2)


def _denied(
    need: Need, error_code: int, operations: int, *, refused: int = TOPIC_AUTHORIZATION_FAILED
) -> bool:
    """Whether the broker's answer says ``need`` is refused (an unknown answer is not a refusal)."""
    if error_code == refused:
        return True
    if error_code or operations == OPERATIONS_UNKNOWN:
        return False  # a topic that does not exist yet, a group the broker cannot describe: not ours to say
    return not operations & (1 << need.operation)


def _refuse(settings: Settings, missing: Iterable[Need]) -> None:
    missing = list(dict.fromkeys(missing))
    if missing:
        raise KafkaAccessError(
            f"{principal(settings)} may not do {', '.join(map(str, missing))}: an ACL is missing "
            "(the README's Security section lists what each role needs)"
        )


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            hosts.append((host.strip("[]"), int(port)))
    return hosts


def _describe(error: BaseException) -> str:
    """``ClassName: message``, without the ``[Error 58] ClassName:`` aiokafka puts before its messages."""
    name = type(error).__name__
    text = re.sub(rf"^(\[Error \d+\] )?{name}:? ?", "", " ".join(str(error).split()))
    return f"{name}: {text}" if text else name


__all__ = [
    "KafkaAccessError",
    "Need",
    "Operation",
    "check_access",
    "log_reader_needs",
    "publisher_needs",
    "worker_needs",
]
