"""The demo's moving parts: a broker (private or given), Redis (private or none) and worker replicas.

The private broker is Apache Kafka (the reference, and what kcat and other librdkafka clients can
talk to); ``DEMO_BROKER=tansu`` picks Tansu instead (in memory, starts at once).
``KAFKA_BOOTSTRAP=host:port`` uses a running cluster and starts no broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from worker.errors import ConfigError
from worker.health.probe import probe
from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka
from worker.local.process import ManagedProcess, free_port
from worker.local.redis import LocalRedis

GROUP = "routeworker-demo"
BROKER_ENV = "DEMO_BROKER"
BROKERS: dict[str, type[LocalKafka] | type[LocalBroker]] = {"kafka": LocalKafka, "tansu": LocalBroker}


def embedded_broker(choice: str | None = None) -> LocalKafka | LocalBroker:
    """The private broker $DEMO_BROKER names (kafka, the default, or tansu), not yet started."""
    name = (choice if choice is not None else os.environ.get(BROKER_ENV, "")) or "kafka"
    if name not in BROKERS:
        raise ConfigError(f"{BROKER_ENV}={name!r}: one of {', '.join(BROKERS)}")
    return BROKERS[name]()


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one `routeworker` sub-command in a child process; raise with its output on failure."""
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"routeworker {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


class DemoStack:
    """Starts what the demo needs and stops all of it, whatever happened in between."""

    def __init__(self, workdir: Path, replicas: int) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.broker: LocalKafka | LocalBroker | None = None
        self.redis: LocalRedis | None = None
        self.workers: list[tuple[ManagedProcess, int]] = []
        self.bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "")

    def start_services(self) -> None:
        if not self.bootstrap:
            self.broker = embedded_broker().start()
            self.bootstrap = self.broker.bootstrap
        if shutil.which("redis-server"):
            self.redis = LocalRedis().start()

    def env(self, **extra: str) -> dict[str, str]:
        """Settings for every child: this stack's broker and Redis, fast rebalances for a demo."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_")}
        env.update(
            ROUTEWORKER_KAFKA_BOOTSTRAP=self.bootstrap,
            ROUTEWORKER_GROUP_ID=GROUP,
            ROUTEWORKER_KAFKA_HEARTBEAT_INTERVAL_MS="300",
            ROUTEWORKER_KAFKA_SESSION_TIMEOUT_MS="6000",
            HF_HUB_OFFLINE="1",
        )
        if self.redis is not None:
            env["ROUTEWORKER_REDIS_URL"] = self.redis.url
        env.update(extra)
        return env

    def start_workers(self) -> None:
        for n in range(1, self.replicas + 1):
            port = free_port()
            env = self.env(
                ROUTEWORKER_REPLICA_ID=f"demo-worker-{n}",
                ROUTEWORKER_STORE_PATH=str(self.workdir / f"worker-{n}" / "routes.sqlite3"),
                ROUTEWORKER_HEALTH_PORT=str(port),
            )
            argv = [sys.executable, "-m", "worker.cli.main", "run"]
            self.workers.append((ManagedProcess(argv, self.workdir / f"worker-{n}", env, "worker.log"), port))

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every replica's /readyz answers 200 (route table caught up, partitions held)."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.workers)
        while pending and time.monotonic() < deadline:
            for worker in list(pending):
                process, port = worker
                if not process.alive():
                    raise RuntimeError(f"a worker exited during start-up:\n{process.log_tail()}")
                with contextlib.suppress(OSError):
                    if probe(port, "/readyz", timeout_s=1.0)[0] == 200:
                        pending.remove(worker)
            time.sleep(0.3)
        if pending:
            raise TimeoutError(f"{len(pending)} worker(s) not ready after {timeout_s:.0f}s")

    def stop(self) -> list[int | None]:
        """SIGTERM every worker (they commit and exit), then stop the services; returns exit codes."""
        codes = []
        for process, _ in self.workers:
            process.stop(timeout_s=30)
            codes.append(process.proc.returncode)
        for service in (self.redis, self.broker):
            if service is not None:
                service.close()
        return codes
