"""`make kafka`: everything the private Apache Kafka needs, checked; free when it is all there.

The broker jars (resolved with mvn on first use, sha256-checked every time), a Java of 17 or newer,
and the class archive that halves a node's start. Prints one line when ready, one line and exit 1
when something is missing.
"""

from __future__ import annotations

import logging
import sys

from worker.local.errors import ServiceError
from worker.local.kafka_cds import prepare_class_archive
from worker.local.kafka_runtime import kafka_runtime

logger = logging.getLogger(__name__)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # the training run's clients
    try:
        runtime = kafka_runtime()
        archive = prepare_class_archive(runtime)
    except ServiceError as exc:
        logger.error("error: %s", exc)  # one line, no traceback
        return 1
    dist = runtime.distribution
    logger.info(
        "Apache Kafka %s ready: %d jars (%.1f MB) in %s; %s; class archive %s",
        dist.version, len(dist.jars()), dist.size_bytes() / 1e6, dist.root, runtime.java.describe(),
        archive.name if archive else "none",
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
