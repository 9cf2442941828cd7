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
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from worker.local.errors import ServiceError

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


def port_is_free(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:port now (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as a JVM or Rust server binds: with SO_REUSEADDR, so only a listener makes the port taken
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def accepts_connections(port: int) -> bool:
    """True when something listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until 127.0.0.1:port accepts connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if accepts_connections(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


class ManagedProcess:
    """A server process started in its own directory and stopped (TERM, then KILL) on close.

    Its output goes to ``workdir/log_name``, appended: a process started again in the same
    directory (a broker restarted on its log dirs) keeps the earlier runs' lines above its own.
    """

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str], log_name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / log_name
        self._log = self.log_path.open("ab")
        self._log_start = self._log.tell()
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

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGSTOP freezes, SIGCONT thaws) if the process still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def freeze(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP, and return once the kernel shows the process stopped (every thread of it)."""
        self.signal(signal.SIGSTOP)
        self._wait_state(lambda state: state == "T", "stopped", timeout_s)

    def thaw(self, timeout_s: float = 5.0) -> None:
        """SIGCONT, and return once the process runs again."""
        self.signal(signal.SIGCONT)
        self._wait_state(lambda state: state != "T", "running", timeout_s)

    def state(self) -> str | None:
        """The kernel's state letter for the process (R, S, T, ...), None once it is gone."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        return stat.rsplit(")", 1)[1].split()[0]

    def _wait_state(self, wanted: Callable[[str], bool], what: str, timeout_s: float) -> None:
        # a signal is delivered asynchronously: wait for it to act, so that callers can rely on it
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            state = self.state()
            if state is None or wanted(state):
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"pid {self.proc.pid} not {what} {timeout_s:.0f} s after the signal")
            time.sleep(0.005)

    def kill(self) -> None:
        """SIGKILL and reap, as a crash would end it; idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate, wait, then kill; idempotent."""
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a frozen process would not act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("pid %d did not stop in %.1fs; killing it", self.proc.pid, timeout_s)
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines this process wrote (not those of earlier runs in the same log)."""
        return "\n".join(self.output().splitlines()[-lines:])

    def output(self) -> str:
        """Everything this process wrote so far."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_start)
                return fh.read().decode(errors="replace")
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
            raise ServiceError(f"{self.name} did not start: {exc}\n{tail}") from None
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

    def close(self) -> None:
        """Stop the service and remove its directory (the same as stop() for a memory-only service)."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
