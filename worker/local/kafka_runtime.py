"""What a private Kafka node runs on: a checked Java, the verified broker jars, and their class archive.

The class archive (class data sharing, `-XX:SharedArchiveFile`) holds the broker's classes as one
JVM loaded them; a JVM that maps it starts in about half the time and shares those pages with the
other nodes. `make kafka` writes it (:mod:`worker.local.kafka_cds`); without it, or with one that
does not fit the Java, a node starts normally (`-Xshare:auto`), only slower.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from worker.local.java import JavaRuntime, find_java
from worker.local.kafka_dist import KafkaDistribution, prepare_kafka

logger = logging.getLogger(__name__)

# a test broker on a small shared machine: quick to start (C1 only), one GC thread, and a JVM
# that runs out of memory exits instead of limping on; options given by the caller come later
# on the command line and win
JVM_OPTIONS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


@dataclass(frozen=True)
class KafkaRuntime:
    """A checked Java and the verified broker jars (and, when made, their class archive)."""

    java: JavaRuntime
    distribution: KafkaDistribution

    @property
    def class_archive(self) -> Path:
        """Where this Java's archive of these jars lives (it may not exist yet)."""
        digest = hashlib.sha256(
            "\0".join([str(self.java.executable.resolve()), self.java.version, *JVM_OPTIONS]).encode()
        ).hexdigest()[:12]
        return self.distribution.root / "cds" / f"java{self.java.feature}-{digest}.jsa"

    def jvm_options(self, *, use_archive: bool = True) -> list[str]:
        """The JVM options every node and tool starts with."""
        options = list(JVM_OPTIONS)
        if use_archive and self.class_archive.is_file():
            options.append(f"-XX:SharedArchiveFile={self.class_archive}")
        return options


def kafka_runtime(java: Path | None = None, cache_dir: Path | None = None) -> KafkaRuntime:
    """Choose and check the Java, and prepare the jars (resolving them on first use)."""
    runtime = KafkaRuntime(find_java(java), prepare_kafka(cache_dir))
    archive = "its class archive" if runtime.class_archive.is_file() else "no class archive yet (make kafka)"
    logger.info(
        "kafka %s runs on %s, with %s",
        runtime.distribution.version, runtime.java.describe(), archive,
    )  # fmt: skip
    return runtime
