"""Child processes that never outlive their parent (tests and demos start brokers with this)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGKILL to the child when the parent dies, even by kill -9, so a
    # crashed test run leaves no broker behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until 127.0.0.1:port accepts connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


class ManagedProcess:
    """A server process started in its own directory and stopped (TERM, then KILL) on close."""

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str], log_name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / log_name
        self._log = self.log_path.open("wb")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # child runs no Python threads: safe
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate, wait, then kill; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("pid %d did not stop in %.1fs; killing it", self.proc.pid, timeout_s)
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def clean_env(drop: tuple[str, ...]) -> dict[str, str]:
    """The current environment without the named variables."""
    return {k: v for k, v in os.environ.items() if k not in drop}


class LocalService:
    """A private server on a free loopback port in its own temporary directory; gone after stop()."""

    name = "service"
    drop_env: tuple[str, ...] = ()

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"routeworker-{self.name}-"))
        self._process: ManagedProcess | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 20.0) -> Self:
        self._process = ManagedProcess(
            self.argv(), self.workdir, clean_env(self.drop_env), f"{self.name}.log"
        )
        try:
            wait_for_port(self.port, timeout_s, self._process.proc)
        except (TimeoutError, RuntimeError) as exc:
            tail = self._process.log_tail()
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {exc}\n{tail}") from None
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
