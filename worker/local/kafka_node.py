"""One Apache Kafka JVM in KRaft combined mode (broker and controller): format, start, stop, kill, freeze.

A node formats its log directory once, writes its server.properties at every start, and keeps its
data and ports across stops until its cluster (:class:`worker.local.kafka.LocalKafka`) is closed.
A start that fails names why: the first error line of the JVM's log, then its last lines.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

from worker.local.errors import ServiceError
from worker.local.kafka_config import CLIENT_LISTENER, LOG4J2_PROPERTIES, render_properties
from worker.local.kafka_probe import metadata_brokers
from worker.local.kafka_runtime import KafkaRuntime
from worker.local.process import ManagedProcess, accepts_connections, clean_env, port_is_free

DEFAULT_HEAP = "256m"
# the JVM reads these by itself; an operator's settings must not leak into a private broker
_DROP_ENV = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS", "CLASSPATH")
SERVER_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"  # what bin/kafka-storage.sh runs


class KafkaNode:
    """One combined-mode JVM of a :class:`LocalKafka`; its ``properties`` are written at every start."""

    def __init__(
        self,
        node_id: int,
        home: Path,
        ports: Mapping[str, int],
        properties: dict[str, str],
        cluster_id: str,
        runtime: Callable[[], KafkaRuntime],
        *,
        format_args: Sequence[str] = (),
        jvm_options: Sequence[str] = (),
        heap: str = DEFAULT_HEAP,
    ) -> None:
        self.node_id = node_id
        self.home = home
        self.ports = dict(ports)
        self.properties = properties
        self.cluster_id = cluster_id
        self.format_args = tuple(format_args)
        self.jvm_options = tuple(jvm_options)
        self.heap = heap
        self.use_archive = True  # the class archive, when one exists (its training run sets False)
        self._runtime = runtime
        self._process: ManagedProcess | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_path(self) -> Path:
        return self.home / "kafka.log"

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_for(CLIENT_LISTENER)

    def bootstrap_for(self, listener: str) -> str:
        """host:port of one of this node's listeners (PLAINTEXT, or an extra listener's name)."""
        return f"127.0.0.1:{self.ports[listener]}"

    @property
    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def check_ports(self) -> None:
        """Raise, naming the port and its listener, when another process listens on one of ours."""
        for listener, port in self.ports.items():
            if not port_is_free(port):
                raise ServiceError(
                    f"port 127.0.0.1:{port} ({listener} listener of kafka node {self.node_id}) is taken"
                )

    def format(self) -> None:
        """`kafka-storage format` of this node's log directory with the cluster id (once)."""
        if self.formatted:
            return
        runtime = self._runtime()
        self._write_config()
        argv = [
            str(runtime.java.executable), "-Xmx128m", *runtime.jvm_options(use_archive=self.use_archive),
            *self.jvm_options, *self._log_options(),
            "-cp", runtime.distribution.classpath(), STORAGE_TOOL, "format",
            "--config", str(self.home / "server.properties"), "--cluster-id", self.cluster_id,
            *self.format_args,
        ]  # fmt: skip
        tool = ManagedProcess(argv, self.home, clean_env(_DROP_ENV), "format.log")
        try:
            code: int | None = tool.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            code = None
        tool.kill()
        if code != 0 or not self.formatted:
            output = tool.output()
            why = f"exit {code}" if code is not None else "no exit after 120 s"
            raise ServiceError(
                f"kafka node {self.node_id}: formatting {self.data_dir} failed ({why}): {_cause(output)}"
                f"\n--- last lines of {tool.log_path} ---\n{_tail(output)}"
            )

    def launch(self) -> None:
        """Start the JVM without waiting for it (format first if needed); see :meth:`wait_ready`."""
        if self.alive():
            raise ServiceError(f"kafka node {self.node_id} is already running (pid {self.pid})")
        self.check_ports()
        runtime = self._runtime()
        self.format()
        self._write_config()
        argv = [
            str(runtime.java.executable), f"-Xmx{self.heap}",
            *runtime.jvm_options(use_archive=self.use_archive), *self.jvm_options, *self._log_options(),
            "-cp", runtime.distribution.classpath(), SERVER_MAIN, str(self.home / "server.properties"),
        ]  # fmt: skip
        with self.log_path.open("a") as log:
            log.write(f"=== routeworker: node {self.node_id} starts at {time.strftime('%F %T')} ===\n")
        self._process = ManagedProcess(argv, self.home, clean_env(_DROP_ENV), self.log_path.name)

    def wait_ready(self, timeout_s: float, expect: set[int] | None = None) -> None:
        """Block until this node answers Metadata listing ``expect`` (default: itself) among its brokers."""
        expect = expect if expect is not None else {self.node_id}
        deadline = time.monotonic() + timeout_s
        while True:
            process = self._process
            if process is None or not process.alive():
                code = process.proc.returncode if process else None
                raise ServiceError(self._failure(f"the JVM exited with code {code}"))
            # an open port first: aiokafka logs an error for every refused bootstrap
            if accepts_connections(self.ports[CLIENT_LISTENER]):
                brokers = metadata_brokers(self.bootstrap, timeout_s=min(5.0, timeout_s))
                if brokers is not None and expect <= brokers:
                    return
            if time.monotonic() > deadline:
                raise ServiceError(self._failure(f"no answer to Kafka requests within {timeout_s:.0f} s"))
            time.sleep(0.1)

    def start(self, timeout_s: float = 120.0) -> Self:
        """Launch and wait until it serves; on failure the JVM is killed and the error names why."""
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown), then SIGKILL after ``timeout_s``; the data stays."""
        if self._process is not None:
            self._process.stop(timeout_s)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (stop several nodes at once, then :meth:`stop` each)."""
        if self._process is not None:
            self._process.signal(signal.SIGCONT)
            self._process.signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM killer would end it; the data stays."""
        if self._process is not None:
            self._process.kill()

    def freeze(self) -> None:
        """SIGSTOP: the node keeps its sockets but answers nothing (a long GC pause, a hung host).

        Returns once the kernel shows the JVM stopped.
        """
        if self._process is not None:
            self._process.freeze()

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`; returns once the JVM runs again."""
        if self._process is not None:
            self._process.thaw()

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(render_properties(self.properties), encoding="latin-1")
        (self.home / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def _log_options(self) -> list[str]:
        config = self.home / "log4j2.properties"
        return [f"-Dlog4j2.configurationFile={config}", f"-Dkafka.logs.dir={self.home}"]

    def _failure(self, why: str) -> str:
        output = self._process.output() if self._process else ""
        cause = _cause(output)
        first = f"kafka node {self.node_id} did not start: {why}" + (f": {cause}" if cause else "")
        return f"{first}\n--- last lines of {self.log_path} ---\n{_tail(output)}"


_CAUSES = re.compile(
    r" (ERROR|FATAL) |^Exception in thread|^Terminating due to|^Error: |: error: |^\S+(Exception|Error): "
)


def _cause(output: str) -> str:
    """The line that says why: the first error line, with the exception it names if one follows."""
    lines = [line for line in output.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if _CAUSES.search(line):
            text = line.split("] ", 1)[-1].strip() if line.startswith("[") else line.strip()
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if re.match(r"^\S+(Exception|Error)\b", following):
                text = f"{text} {following}"
            return text[:500]
    return lines[-1].strip()[:500] if lines else "no output"


def _tail(output: str, lines: int = 30) -> str:
    return "\n".join(output.splitlines()[-lines:])
