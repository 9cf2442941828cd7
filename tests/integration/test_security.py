"""Security on Apache Kafka: SASL/SCRAM over TLS, ACLs through KRaft's StandardAuthorizer.

One secure broker serves the module (:meth:`LocalKafka.secure`, certificates from a CA the test
makes with trustme). Its PLAINTEXT listener belongs to the test (a super user): it creates topics,
grants and revokes ACLs and produces queries. Every routeworker process talks to the SASL_SSL
listener as its own principal, with exactly the ACLs the README lists for its role:

- a worker routes with only its ACLs, and its principal can do nothing else;
- a wrong password, an untrusted certificate and a missing ACL each stop a starting worker with one
  line naming the cause;
- a publisher without Write on the mutation log cannot change routing (the CLI says why in one
  line, the broker refuses the records too, and the replica answers as before);
- a read permission (queries, or the mutation log) taken away while the worker runs stops it (exit 1)
  with one line naming the refusal, no traceback;
- no password appears in any log, in `config show`, or in any crash output.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from cryptography.hazmat.primitives import serialization
from pipeline_harness import (
    ROOT,
    Record,
    Topics,
    WorkerProcess,
    create_topics,
    produce,
    publish_routes,
    route_definitions,
    wait_ready,
)

from worker.config import Settings
from worker.embedding.model import ModelSpec
from worker.kafka_client import client_options
from worker.local.kafka import SECURE_LISTENER, LocalKafka
from worker.local.process import free_port
from worker.replication.guard import admin_transactional_id

pytestmark = pytest.mark.integration

MECHANISM = "SCRAM-SHA-512"
READER_GROUPS = "downstream-"  # the prefix of the downstream reader's consumer groups
# distinct, unlikely strings: a log that holds one has leaked it
PASSWORDS = {
    "worker": "Wkr-pw-7f3a9c1e",
    "publisher": "Pub-pw-2b8d4e6f",
    "reader": "Rdr-pw-9c0e1a3b",
    "intruder": "Int-pw-5d7f9b2c",
}


@dataclass(frozen=True)
class SecureStack:
    kafka: LocalKafka
    ca_file: Path
    untrusted_ca_file: Path
    logs: Path  # every log and output a test of the module writes goes here

    @property
    def admin(self) -> str:
        """The PLAINTEXT listener: the test's own super-user access."""
        return self.kafka.bootstrap

    @property
    def secure(self) -> str:
        return self.kafka.bootstrap_for(SECURE_LISTENER)

    def options(self, user: str, **overrides: Any) -> dict[str, Any]:
        """Settings of a routeworker process that logs in as ``user``."""
        return {
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": MECHANISM,
            "kafka_sasl_username": user,
            "kafka_sasl_password": PASSWORDS.get(user, "no-such-password"),
            "kafka_ssl_cafile": self.ca_file,
            **overrides,
        }


def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """The broker's PEM keystore (PKCS#8 key + certificate chain for 127.0.0.1), its CA, another CA."""
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )  # Kafka's PEM keystore reads PKCS#8 only
    keystore = directory / "broker.pem"
    keystore.write_bytes(pkcs8 + b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    return keystore, directory / "ca.pem", directory / "other-ca.pem"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    certs = tmp_path_factory.mktemp("certificates")
    keystore, ca_file, untrusted = write_certificates(certs)
    kafka = LocalKafka.secure(keystore=keystore, users=PASSWORDS, mechanism=MECHANISM)
    kafka.start()
    try:
        yield SecureStack(kafka, ca_file, untrusted, tmp_path_factory.mktemp("security-logs"))
        kafka.stop()  # the broker's own logs are complete now: they hold no password either
        assert_no_password(kafka.workdir)
    finally:
        kafka.close()


def assert_no_password(*roots: Path) -> None:
    """No password in any file under ``roots`` (logs, captured outputs)."""
    files = [
        path for root in roots for path in root.rglob("*") if path.is_file() and path.suffix != ".sqlite3"
    ]
    assert files, f"no log under {roots}: the check would prove nothing"
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        leaked = [user for user, password in PASSWORDS.items() if password in text]
        assert not leaked, f"{path} holds the password of {leaked}"


# --- ACLs, through the PLAINTEXT listener (librdkafka's admin client: aiokafka has no ACL API) ---


def allow(user: str, kind: ResourceType, name: str, operation: AclOperation) -> AclBinding:
    return AclBinding(
        kind, name, ResourcePatternType.LITERAL, f"User:{user}", "*", operation, AclPermissionType.ALLOW
    )


def worker_acls(topics: Topics, user: str = "worker") -> list[AclBinding]:
    """The worker's row of the README's table."""
    return [
        allow(user, ResourceType.TOPIC, topics.queries, AclOperation.READ),
        allow(user, ResourceType.TOPIC, topics.mutations, AclOperation.READ),
        allow(user, ResourceType.TOPIC, topics.mutations, AclOperation.DESCRIBE_CONFIGS),
        allow(user, ResourceType.TOPIC, topics.intents, AclOperation.WRITE),
        allow(user, ResourceType.TOPIC, topics.dlq, AclOperation.WRITE),
        allow(user, ResourceType.GROUP, topics.group, AclOperation.READ),
    ]


def publisher_acls(topics: Topics, user: str = "publisher") -> list[AclBinding]:
    """The admin's row: read and write the log, in the transaction every admin of it shares."""
    return [
        allow(user, ResourceType.TOPIC, topics.mutations, AclOperation.READ),
        allow(user, ResourceType.TOPIC, topics.mutations, AclOperation.WRITE),
        allow(
            user, ResourceType.TRANSACTIONAL_ID, admin_transactional_id(topics.mutations), AclOperation.WRITE
        ),
    ]


def reader_acls(topics: Topics, user: str = "reader") -> list[AclBinding]:
    """A downstream service's row: read the intents, in groups of its own prefix."""
    return [
        allow(user, ResourceType.TOPIC, topics.intents, AclOperation.READ),
        AclBinding(
            ResourceType.GROUP,
            READER_GROUPS,
            ResourcePatternType.PREFIXED,
            f"User:{user}",
            "*",
            AclOperation.READ,
            AclPermissionType.ALLOW,
        ),
    ]


def grant(stack: SecureStack, bindings: list[AclBinding], *, revoke: bool = False) -> None:
    admin = AdminClient({"bootstrap.servers": stack.admin})
    if revoke:
        futures = admin.delete_acls(
            [
                AclBindingFilter(
                    b.restype,
                    b.name,
                    b.resource_pattern_type,
                    b.principal,
                    b.host,
                    b.operation,
                    b.permission_type,
                )
                for b in bindings
            ]
        )
    else:
        futures = admin.create_acls(bindings)
    for future in futures.values():
        future.result(timeout=30)


# --- routeworker processes as principals ---


def routeworker(stack: SecureStack, name: str, args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """One `routeworker ...` command; its output (kept under ``stack.logs``) and exit status."""
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = done.stdout + done.stderr
    (stack.logs / f"{name}.log").write_text(output)
    return done.returncode, output


def problems(output: str) -> list[str]:
    """The lines of a process's output that are not INFO or DEBUG log lines."""
    return [
        line for line in output.splitlines() if line.strip() and not re.match(r"^\S+ \S+ (INFO|DEBUG) ", line)
    ]


def query(i: int, text: str) -> Record:
    return f"conv-{i % 3}".encode(), orjson.dumps({"id": f"q{i}", "text": text}), []


@dataclass
class SecuredWorker:
    topics: Topics
    process: WorkerProcess
    health_port: int
    env: dict[str, str]


@pytest.fixture(scope="module")
async def secured_worker(stack: SecureStack, model_spec: ModelSpec) -> AsyncIterator[SecuredWorker]:
    """`routeworker run` as User:worker with exactly the worker's ACLs; the routes published by
    `routeworker routes apply` as User:publisher, with exactly the publisher's."""
    topics = Topics.fresh()
    await create_topics(stack.admin, topics)
    await asyncio.to_thread(grant, stack, worker_acls(topics) + publisher_acls(topics))
    route_file = stack.logs / "routes.json"
    route_file.write_bytes(orjson.dumps([d.model_dump(exclude_none=True) for d in route_definitions()]))
    publisher_env = topics.env(stack.secure, stack.logs / "unused.sqlite3", **stack.options("publisher"))
    code, output = await asyncio.to_thread(
        routeworker,
        stack,
        "publisher-apply",
        ["routes", "apply", str(route_file), "--no-calibrate"],
        publisher_env,
    )
    assert code == 0, output
    async with started_worker(stack, topics, "worker") as worker:
        yield worker


@asynccontextmanager
async def started_worker(stack: SecureStack, topics: Topics, name: str) -> AsyncIterator[SecuredWorker]:
    """`routeworker run` as User:worker on ``topics``, ready; its log is ``<name>.log``."""
    port = free_port()
    env = topics.env(
        stack.secure,
        stack.logs / f"{name}.sqlite3",
        **stack.options("worker"),
        replica_id=name,
        health_port=port,
        routing_head=False,
        routing_top_k=1,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_interval_ms=500,
    )
    process = WorkerProcess(env, stack.logs / f"{name}.log")
    try:
        await wait_ready(port, process)
        yield SecuredWorker(topics, process, port, env)
    finally:
        process.close()


async def read_intents(stack: SecureStack, topics: Topics, query_ids: set[str]) -> list[dict[str, Any]]:
    """Routed intents up to those of ``query_ids``, read from the start by the downstream
    principal (User:reader) in a group of its own."""
    await asyncio.to_thread(grant, stack, reader_acls(topics))
    settings = Settings(**topics.options(stack.secure), **stack.options("reader"))
    consumer = AIOKafkaConsumer(
        topics.intents,
        group_id=f"{READER_GROUPS}{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        **client_options(settings),
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(60):
            while not query_ids <= {intent["query_id"] for intent in found}:
                batches = await consumer.getmany(timeout_ms=200)
                found += [orjson.loads(r.value) for rs in batches.values() for r in rs if r.value]
    finally:
        await consumer.stop()
    return found


async def test_the_worker_routes_with_its_own_acls_and_may_do_nothing_else(
    stack: SecureStack, secured_worker: SecuredWorker
) -> None:
    topics = secured_worker.topics
    texts = ["will it rain tomorrow", "play some jazz music", "book a flight to paris"]
    await produce(stack.admin, topics.queries, [query(i, t) for i, t in enumerate(texts)])
    intents = await read_intents(stack, topics, {"q0", "q1", "q2"})
    assert sorted((i["query_id"], i["route"]) for i in intents) == [
        ("q0", "weather"),
        ("q1", "music"),
        ("q2", "travel"),
    ]
    assert "Kafka access checked: User:worker may do what it needs" in secured_worker.process.log()
    # and nothing else: the broker refuses the worker's principal what its role does not need
    settings = Settings(**topics.options(stack.secure), **stack.options("worker"))
    producer = AIOKafkaProducer(enable_idempotence=False, **client_options(settings))
    await producer.start()
    try:
        for topic in (topics.queries, topics.mutations):
            with pytest.raises(TopicAuthorizationFailedError):
                await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"k"), 30)
    finally:
        await producer.stop()


@pytest.mark.parametrize(
    ("case", "overrides", "cause"),
    [
        (
            "wrong-password",
            {"kafka_sasl_password": "not-the-password"},
            "SASL authentication of User:worker (SCRAM-SHA-512) refused by 127.0.0.1:",
        ),
        ("untrusted-certificate", {"untrusted": True}, "TLS: the certificate of 127.0.0.1:"),
        ("missing-acl", {"missing": "dlq"}, "User:worker may not do WRITE on topic 'dlq-"),
    ],
)
async def test_a_refused_start_says_why_in_one_line(
    stack: SecureStack, case: str, overrides: dict[str, Any], cause: str
) -> None:
    topics = Topics.fresh()
    await create_topics(stack.admin, topics)
    acls = worker_acls(topics)
    if overrides.pop("missing", None):
        acls = [a for a in acls if a.name != topics.dlq]
    await asyncio.to_thread(grant, stack, acls)
    if overrides.pop("untrusted", False):
        overrides["kafka_ssl_cafile"] = stack.untrusted_ca_file
    options = {**stack.options("worker"), **overrides}
    env = topics.env(stack.secure, stack.logs / f"{case}.sqlite3", **options)
    process = WorkerProcess(env, stack.logs / f"refused-{case}.log")
    try:
        code = await process.wait(within=90)
    finally:
        process.close()
    log = process.log()
    assert code == 1, log
    (refusal,) = problems(log)  # one line, no traceback
    assert "ERROR worker.app.run: routeworker cannot start: Kafka refuses access: " in refusal
    assert cause in refusal, log


async def test_a_publisher_without_write_on_the_log_cannot_change_routing(
    stack: SecureStack, secured_worker: SecuredWorker
) -> None:
    topics = secured_worker.topics
    # a principal that may read the log (say a read-only admin) but not write it
    await asyncio.to_thread(
        grant, stack, [allow("intruder", ResourceType.TOPIC, topics.mutations, AclOperation.READ)]
    )
    hijack = "i want to open a new bank account"
    route_file = stack.logs / "hijack.json"
    route_file.write_bytes(orjson.dumps([{"name": "hijack", "utterances": [hijack]}]))
    env = topics.env(stack.secure, stack.logs / "unused.sqlite3", **stack.options("intruder"))
    end_before = await mutation_log_end(stack, topics)
    code, output = await asyncio.to_thread(
        routeworker, stack, "intruder-apply", ["routes", "apply", str(route_file), "--no-calibrate"], env
    )
    assert code == 1, output
    assert problems(output) == [
        f"routeworker: Kafka refuses access: User:intruder may not do WRITE on topic '{topics.mutations}': "
        "an ACL is missing (the README's Security section lists what each role needs)"
    ]
    # the broker itself refuses the records, not only the CLI's check
    settings = Settings(**topics.options(stack.secure), **stack.options("intruder"))
    producer = AIOKafkaProducer(enable_idempotence=False, **client_options(settings))
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(producer.send_and_wait(topics.mutations, b"{}", key=b"hijack"), 30)
    finally:
        await producer.stop()
    assert await mutation_log_end(stack, topics) == end_before
    # the replica answers as before: the hijacking route does not exist for it
    await produce(stack.admin, topics.queries, [query(100, hijack)])
    intents = await read_intents(stack, topics, {"q100"})
    (answer,) = [i for i in intents if i["query_id"] == "q100"]
    assert answer["route"] != "hijack"
    assert all(c["route"] != "hijack" for c in answer["candidates"])


async def mutation_log_end(stack: SecureStack, topics: Topics) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.admin)
    await consumer.start()
    try:
        partition = TopicPartition(topics.mutations, 0)
        return int((await consumer.end_offsets([partition]))[partition])
    finally:
        await consumer.stop()


async def test_config_show_and_every_output_hold_no_password(
    stack: SecureStack, secured_worker: SecuredWorker
) -> None:
    code, output = await asyncio.to_thread(
        routeworker, stack, "config-show", ["config", "show"], secured_worker.env
    )
    assert code == 0, output
    assert "ROUTEWORKER_KAFKA_SASL_PASSWORD" in output
    assert "**********" in output
    assert_no_password(stack.logs)


@pytest.mark.parametrize("topic", ["queries", "mutations"])
async def test_a_read_permission_removed_while_running_stops_the_worker(
    stack: SecureStack, model_spec: ModelSpec, topic: str
) -> None:
    topics = Topics.fresh()
    await create_topics(stack.admin, topics)
    await publish_routes(stack.admin, topics.mutations, route_definitions())
    await asyncio.to_thread(grant, stack, worker_acls(topics))
    async with started_worker(stack, topics, f"revoked-{topic}") as worker:
        await produce(stack.admin, topics.queries, [query(1, "good morning")])
        await read_intents(stack, topics, {"q1"})
        name = getattr(topics, topic)
        read = allow("worker", ResourceType.TOPIC, name, AclOperation.READ)
        await asyncio.to_thread(grant, stack, [read], revoke=True)
        await produce(stack.admin, topics.queries, [query(2, "good evening")])
        code = await worker.process.wait(within=60)
        log = worker.process.log()
    assert code == 1, log
    # one line names the cause; no exception-group traceback
    assert (
        f"ERROR worker.app.run: routeworker stopped: Kafka refuses access while running: "
        f"[Error 29] TopicAuthorizationFailedError: {name}\n"
    ) in log, log
    assert "Traceback" not in log, log
    assert_no_password(stack.logs)
