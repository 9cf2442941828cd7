"""A private Apache Kafka: KRaft nodes in combined mode (broker and controller in one JVM) on loopback.

``LocalKafka()`` is one node; ``LocalKafka(nodes=3)`` is three JVMs with a controller quorum of three,
so topics can have three replicas. Each node formats its own log directory with the cluster's fresh
id on its first start and keeps it until :meth:`LocalKafka.close`: a node stopped (``stop``),
killed (``kill``) or frozen (``freeze``/``thaw``) comes back on the same data and the same ports.
Extra broker settings, extra listeners (with listener-scoped settings such as a JAAS config), extra
``kafka-storage format`` arguments (``--add-scram``) and JVM options pass straight through;
:meth:`LocalKafka.secure` puts them together into a broker that enforces SASL/SCRAM over TLS and ACLs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self

from worker.local.capabilities import KAFKA_CAPABILITIES
from worker.local.kafka_config import (
    CLIENT_LISTENER,
    CONTROLLER_LISTENER,
    Listener,
    new_cluster_id,
    server_properties,
)
from worker.local.kafka_node import DEFAULT_HEAP, KafkaNode
from worker.local.kafka_runtime import KafkaRuntime, kafka_runtime
from worker.local.process import free_port

__all__ = ["DEFAULT_HEAP", "SECURE_LISTENER", "KafkaNode", "LocalKafka"]

logger = logging.getLogger(__name__)

#: the SASL_SSL listener of :meth:`LocalKafka.secure`
SECURE_LISTENER = "SECURE"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


class LocalKafka:
    """Apache Kafka on loopback for tests, benchmarks and the demo: ``nodes`` combined KRaft nodes.

    ``bootstrap`` lists every node's PLAINTEXT listener. ``properties`` override the test defaults
    of :mod:`worker.local.kafka_config` on every node; ``listeners`` add listeners (say SASL_SSL);
    ``format_args`` go to `kafka-storage format` (say ``--add-scram``); ``jvm_options`` to every JVM.
    """

    name = "kafka"
    capabilities = KAFKA_CAPABILITIES

    def __init__(
        self,
        nodes: int = 1,
        *,
        port: int | None = None,
        properties: Mapping[str, str] | None = None,
        listeners: Sequence[Listener] = (),
        format_args: Sequence[str] = (),
        jvm_options: Sequence[str] = (),
        heap: str = DEFAULT_HEAP,
        java: Path | None = None,
        cache_dir: Path | None = None,
        runtime: KafkaRuntime | None = None,
        workdir: Path | None = None,
    ) -> None:
        if not 1 <= nodes <= 9:
            raise ValueError(f"nodes: 1 to 9, not {nodes}")
        if nodes > 1 and (port or any(listener.port for listener in listeners)):
            raise ValueError("fixed ports are for a single node; a cluster takes free ports")
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="routeworker-kafka-"))
        self.cluster_id = new_cluster_id()
        self._java = java
        self._cache_dir = cache_dir
        self._runtime = runtime
        ports = {
            node_id: {
                CLIENT_LISTENER: (port if node_id == 1 and port else free_port()),
                CONTROLLER_LISTENER: free_port(),
                **{listener.name: listener.port or free_port() for listener in listeners},
            }
            for node_id in range(1, nodes + 1)
        }
        voters = {node_id: node_ports[CONTROLLER_LISTENER] for node_id, node_ports in ports.items()}
        self.nodes = [
            KafkaNode(
                node_id,
                self.workdir / f"node-{node_id}",
                node_ports,
                server_properties(
                    node_id=node_id,
                    ports=node_ports,
                    voters=voters,
                    log_dir=self.workdir / f"node-{node_id}" / "data",
                    listeners=listeners,
                    overrides=properties,
                ),
                self.cluster_id,
                self.runtime,
                format_args=format_args,
                jvm_options=jvm_options,
                heap=heap,
            )
            for node_id, node_ports in ports.items()
        ]

    @classmethod
    def secure(
        cls,
        *,
        keystore: Path,
        users: Mapping[str, str],
        mechanism: str = "SCRAM-SHA-512",
        truststore: Path | None = None,
        super_users: Iterable[str] = (),
        properties: Mapping[str, str] | None = None,
        nodes: int = 1,
        heap: str = DEFAULT_HEAP,
        workdir: Path | None = None,
    ) -> LocalKafka:
        """A broker that enforces security on a ``SECURE`` listener: SASL/SCRAM over TLS, and ACLs.

        ``keystore`` is a PEM file with the broker's private key (PKCS#8, unencrypted) and its
        certificate chain; a ``truststore`` (PEM CA bundle) makes the listener ask clients for a
        certificate too (mutual TLS, ``ssl.client.auth=requested``). ``users`` maps SCRAM user names
        to passwords, created when the log directory is formatted (no password is written to
        server.properties). ACLs go through KRaft's StandardAuthorizer; the PLAINTEXT listener
        (``bootstrap``) stays for the brokers themselves and the test's administration: its
        principal, ``User:ANONYMOUS``, is a super user with any ``super_users`` ("User:name").
        """
        tls = {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(keystore)}
        if truststore is not None:
            tls |= {
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(truststore),
                "ssl.client.auth": "requested",
            }
        login = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        listener = Listener(
            SECURE_LISTENER,
            "SASL_SSL",
            {**tls, "sasl.enabled.mechanisms": mechanism, f"{mechanism.lower()}.sasl.jaas.config": login},
        )
        scram = [
            arg
            for name, password in users.items()
            for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]
        authorization = {
            "authorizer.class.name": STANDARD_AUTHORIZER,
            "super.users": ";".join(["User:ANONYMOUS", *super_users]),
            "allow.everyone.if.no.acl.found": "false",
        }
        return cls(
            listeners=[listener],
            properties={**authorization, **(properties or {})},
            format_args=scram,
            nodes=nodes,
            heap=heap,
            workdir=workdir,
        )

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def bootstrap_for(self, listener: str) -> str:
        """Every node's address on one listener, comma-separated."""
        return ",".join(node.bootstrap_for(listener) for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def runtime(self) -> KafkaRuntime:
        """The Java and the jars every node runs with, checked once per LocalKafka."""
        if self._runtime is None:
            self._runtime = kafka_runtime(self._java, self._cache_dir)
        return self._runtime

    def start(self, timeout_s: float = 120.0) -> Self:
        """Format (first time), start every stopped node, and wait until each serves the whole cluster.

        On failure every node is killed (and a cluster that never ran is removed) before the error,
        which names the cause and carries the failing node's last log lines, is raised.
        """
        first_start = not any(node.formatted for node in self.nodes)
        deadline = time.monotonic() + timeout_s
        try:
            stopped = [node for node in self.nodes if not node.alive()]
            for node in stopped:  # before any JVM runs: a taken port is the likeliest failure
                node.check_ports()
            self.runtime()
            with ThreadPoolExecutor(len(self.nodes)) as pool:  # one format JVM per node, at once
                list(pool.map(KafkaNode.format, self.nodes))
            for node in stopped:
                node.launch()
            everyone = {node.node_id for node in self.nodes}
            for node in self.nodes:
                node.wait_ready(max(1.0, deadline - time.monotonic()), expect=everyone)
        except BaseException:
            self.kill()
            if first_start:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every node (SIGTERM to all at once, SIGKILL after ``timeout_s``); the data stays."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.stop(timeout_s)

    def restart(self, timeout_s: float = 120.0) -> Self:
        """Stop, then start on the same log directories and ports."""
        self.stop()
        return self.start(timeout_s)

    def kill(self) -> None:
        """SIGKILL every node; the data stays."""
        for node in self.nodes:
            node.kill()

    def freeze(self) -> None:
        """SIGSTOP every node."""
        for node in self.nodes:
            node.freeze()

    def thaw(self) -> None:
        """SIGCONT every node."""
        for node in self.nodes:
            node.thaw()

    def alive(self) -> bool:
        return all(node.alive() for node in self.nodes)

    def close(self) -> None:
        """Kill every node and remove the cluster's directory: nothing is kept, so nothing is flushed."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()
