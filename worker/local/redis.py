"""A private redis-server on a free port (nothing saved to disk) for tests and `make demo`."""

from __future__ import annotations

import shutil

from worker.local.process import LocalService


class LocalRedis(LocalService):
    """redis-server bound to loopback with persistence off."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: `apt-get install redis-server` (make test does it)")
        return [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--daemonize", "no",
        ]  # fmt: skip
