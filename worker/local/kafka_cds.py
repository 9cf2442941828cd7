"""The broker's class archive, made by a training run: a node that starts, serves a little, and stops.

At a normal exit, a JVM started with `-XX:ArchiveClassesAtExit` writes every class it loaded, from
the JDK and from the jars, into a dynamic CDS archive. The training node does what tests do (topics,
an idempotent and a transactional producer, a consumer group), so the archive holds those classes
too. The archive is checked by mapping it with `-Xshare:on` before it is published under its key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.local.kafka import LocalKafka
from worker.local.kafka_runtime import KafkaRuntime
from worker.local.locks import exclusive

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
_TOPIC = "routeworker-warm-up"


def prepare_class_archive(runtime: KafkaRuntime, progress: Progress = logger.info) -> Path | None:
    """The class archive of ``runtime``, made first (about 15 s, once per Java and jar set) if missing.

    None when this Java wrote an archive it cannot map (nodes then start without one); a training
    broker that does not start raises, as any node would.
    """
    archive = runtime.class_archive
    with exclusive(archive.parent / ".lock"):
        if archive.is_file():
            return archive
        progress(f"training the Kafka class archive for {runtime.java.describe()}")
        partial = archive.with_name(f"{archive.stem}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        kafka = LocalKafka(runtime=runtime)
        try:
            node = kafka.nodes[0]
            node.use_archive = False
            node.format()  # the format tool must not write the archive: only the broker's exit does
            node.jvm_options = (*node.jvm_options, f"-XX:ArchiveClassesAtExit={partial}")
            kafka.start()
            asyncio.run(_exercise(kafka.bootstrap))
            kafka.stop(timeout_s=180)  # the JVM writes the archive as it exits
        finally:
            kafka.close()
        try:
            problem = _problem(runtime, partial)
            if problem:
                logger.warning("no class archive for %s: %s", runtime.java.describe(), problem)
                return None
            partial.rename(archive)
        finally:
            partial.unlink(missing_ok=True)
        progress(f"class archive ready: {archive} ({archive.stat().st_size / 1e6:.0f} MB)")
        return archive


async def _exercise(bootstrap: str) -> None:
    async with asyncio.timeout(60):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            configs = {"cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"}
            await admin.create_topics([NewTopic(_TOPIC, 1, 1, topic_configs=configs)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(_TOPIC, b"value", key=b"key-%d" % (i % 5))
        finally:
            await producer.stop()
        transactional = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="routeworker-warm-up")
        await transactional.start()
        try:
            await transactional.begin_transaction()
            await transactional.send_and_wait(_TOPIC, b"value", key=b"key-t")
            await transactional.commit_transaction()
        finally:
            await transactional.stop()
        consumer = AIOKafkaConsumer(
            _TOPIC,
            bootstrap_servers=bootstrap,
            group_id="routeworker-warm-up",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            # the cleaner may already have compacted the keyed records; the transactional one is last
            keys: set[bytes | None] = set()
            while b"key-t" not in keys:
                batch = await consumer.getmany(timeout_ms=500)
                keys.update(record.key for records in batch.values() for record in records)
            await consumer.commit()
        finally:
            await consumer.stop()


def _problem(runtime: KafkaRuntime, partial: Path) -> str:
    if not partial.is_file():
        return "the training broker exited without writing it"
    done = subprocess.run(
        [
            str(runtime.java.executable), *runtime.jvm_options(use_archive=False), "-Xshare:on",
            f"-XX:SharedArchiveFile={partial}", "-cp", runtime.distribution.classpath(), "-version",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return "it does not map: " + " ".join((done.stdout + done.stderr).strip().splitlines()[:1])
    return ""
