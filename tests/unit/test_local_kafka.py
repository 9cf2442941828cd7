"""The private Apache Kafka without a JVM: jar checks and cache, Java choice, rendered config, ports."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.config import load_settings
from worker.local.errors import JavaError, KafkaDistError, ServiceError
from worker.local.java import find_java
from worker.local.kafka import LocalKafka
from worker.local.kafka_config import Listener, new_cluster_id, render_properties, server_properties
from worker.local.kafka_dist import (
    POM,
    RECORD,
    KafkaDistribution,
    _mvn_failure,
    check_jars,
    default_cache_dir,
    kafka_version,
    prepare_kafka,
    read_record,
)
from worker.local.kafka_runtime import KafkaRuntime
from worker.local.process import ManagedProcess, port_is_free

JARS = {"org.example.a-1.0.jar": b"jar a", "org.example.b-2.0.jar": b"jar b"}

POM_TEXT = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <dependencies><dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
  <version>9.9.9</version></dependency></dependencies>
  <build><plugins><plugin><artifactId>maven-dependency-plugin</artifactId><version>3.8.1</version>
  </plugin></plugins></build>
</project>
"""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path]:
    """A pom and the checksums of what the fake mvn resolves."""
    pom, record = tmp_path / "pom.xml", tmp_path / "jars.sha256"
    pom.write_text(POM_TEXT)
    record.write_text("# recorded\n" + "".join(f"{_sha(d)}  {n}\n" for n, d in JARS.items()))
    return pom, record


def _fake_mvn(tmp_path: Path, jars: dict[str, bytes]) -> Path:
    """An mvn that writes ``jars`` into -DoutputDirectory and counts its calls."""
    writes = "\n".join(f"printf '%s' '{data.decode()}' > \"$out/{name}\"" for name, data in jars.items())
    script = f"""#!/bin/sh
echo run >> "{tmp_path}/mvn-calls"
for arg in "$@"; do case "$arg" in -DoutputDirectory=*) out="${{arg#-DoutputDirectory=}}";; esac; done
{writes}
"""
    return _executable(tmp_path / "mvn", script)


def _calls(tmp_path: Path) -> int:
    calls = tmp_path / "mvn-calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_the_checked_in_pom_and_record_agree() -> None:
    assert kafka_version(POM) == "4.4.0"
    record = read_record(RECORD)
    assert "org.apache.kafka.kafka_2.13-4.4.0.jar" in record
    assert "org.apache.logging.log4j.log4j-slf4j-impl-2.25.5.jar" in record, "a logging backend"
    assert any(name.startswith("org.apache.logging.log4j.log4j-core-") for name in record)


def test_resolution_fills_the_cache_once_then_costs_no_mvn(
    tmp_path: Path, sources: tuple[Path, Path]
) -> None:
    pom, record = sources
    mvn = _fake_mvn(tmp_path, JARS)
    first = prepare_kafka(tmp_path / "cache", mvn=str(mvn), pom=pom, record=record)
    again = prepare_kafka(tmp_path / "cache", mvn=str(tmp_path / "no-such-mvn"), pom=pom, record=record)
    assert first == again == KafkaDistribution("9.9.9", first.root)
    assert _calls(tmp_path) == 1
    assert first.root.is_relative_to(tmp_path / "cache" / "kafka")
    assert [jar.name for jar in first.jars()] == sorted(JARS)
    assert first.classpath().split(":") == [str(first.lib / name) for name in sorted(JARS)]


def test_an_altered_cached_jar_is_resolved_again(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    pom, record = sources
    mvn = _fake_mvn(tmp_path, JARS)
    dist = prepare_kafka(tmp_path / "cache", mvn=str(mvn), pom=pom, record=record)
    (dist.lib / "org.example.b-2.0.jar").write_bytes(b"tampered")
    messages: list[str] = []
    prepare_kafka(tmp_path / "cache", mvn=str(mvn), pom=pom, record=record, progress=messages.append)
    assert _calls(tmp_path) == 2
    assert "checksum mismatch: Kafka jar org.example.b-2.0.jar" in messages[0]
    assert (dist.lib / "org.example.b-2.0.jar").read_bytes() == b"jar b"


def test_a_resolved_jar_that_does_not_match_is_one_line_naming_it(
    tmp_path: Path, sources: tuple[Path, Path]
) -> None:
    pom, record = sources
    mvn = _fake_mvn(tmp_path, {**JARS, "org.example.b-2.0.jar": b"something else"})
    with pytest.raises(KafkaDistError) as failure:
        prepare_kafka(tmp_path / "cache", mvn=str(mvn), pom=pom, record=record)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("checksum mismatch: Kafka jar org.example.b-2.0.jar has sha256 ")
    assert _sha(b"jar b") in message
    assert not list((tmp_path / "cache" / "kafka").glob("9.9.9-*/manifest.json")), "nothing installed"


def test_missing_and_unexpected_jars_are_named(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "org.example.a-1.0.jar").write_bytes(b"jar a")
    record = {name: _sha(data) for name, data in JARS.items()}
    with pytest.raises(KafkaDistError, match=r"Kafka jar org\.example\.b-2\.0\.jar is missing"):
        check_jars(lib, record)
    (lib / "org.example.b-2.0.jar").write_bytes(b"jar b")
    (lib / "org.example.c-3.0.jar").write_bytes(b"jar c")
    with pytest.raises(KafkaDistError, match=r"unexpected Kafka jar org\.example\.c-3\.0\.jar"):
        check_jars(lib, record)


def test_a_malformed_record_names_its_line(tmp_path: Path) -> None:
    record = tmp_path / "jars.sha256"
    record.write_text("# header\nnot-a-checksum  some.jar\n")
    with pytest.raises(KafkaDistError, match=r"jars\.sha256:2: expected '<sha256>  <jar>'"):
        read_record(record)


def test_no_mvn_is_one_line(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    pom, record = sources
    with pytest.raises(KafkaDistError, match=r"^no-such-mvn not found on PATH: install Maven"):
        prepare_kafka(tmp_path / "cache", mvn="no-such-mvn", pom=pom, record=record)


def test_a_failing_mvn_is_one_line_with_its_log(tmp_path: Path, sources: tuple[Path, Path]) -> None:
    pom, record = sources
    mvn = _executable(tmp_path / "mvn", "#!/bin/sh\necho '[ERROR] Non-resolvable parent POM'\nexit 1\n")
    with pytest.raises(KafkaDistError) as failure:
        prepare_kafka(tmp_path / "cache", mvn=str(mvn), pom=pom, record=record)
    message = str(failure.value)
    assert message.startswith("mvn could not resolve the Kafka jars: Non-resolvable parent POM (mvn exit 1;")
    assert "\n" not in message


def test_an_unreachable_maven_central_is_named() -> None:
    output = (
        "[ERROR] Failed to execute goal on project kafka-server-runtime: Could not resolve dependencies "
        "for project routeworker:kafka-server-runtime:pom:4.4.0: Failed to collect dependencies at "
        "org.apache.kafka:kafka_2.13:jar:4.4.0: Failed to read artifact descriptor for "
        "org.apache.kafka:kafka_2.13:jar:4.4.0: Could not transfer artifact "
        "org.apache.kafka:kafka_2.13:pom:4.4.0 from/to central (https://repo.maven.apache.org/maven2): "
        "Connect to repo.maven.apache.org:443 [repo.maven.apache.org/1.2.3.4] failed: Connection refused "
        "-> [Help 1]\n"
    )
    assert _mvn_failure(output) == (
        "Maven Central unreachable: cannot download org.apache.kafka:kafka_2.13:pom:4.4.0 from central "
        "(https://repo.maven.apache.org/maven2): Connect to repo.maven.apache.org:443 "
        "[repo.maven.apache.org/1.2.3.4] failed: Connection refused"
    )


def _fake_java(home: Path, spec: str, version: str) -> Path:
    (home / "bin").mkdir(parents=True)
    props = f"    java.specification.version = {spec}\n    java.version = {version}\n"
    return _executable(home / "bin" / "java", f"#!/bin/sh\nprintf '%s' '{props}' >&2\n")


def test_java_comes_from_java_home_and_must_be_17_or_newer(tmp_path: Path) -> None:
    _fake_java(tmp_path / "jdk21", "21", "21.0.2")
    java = find_java(env={"JAVA_HOME": str(tmp_path / "jdk21"), "PATH": ""})
    assert (java.feature, java.version, java.source) == (21, "21.0.2", "JAVA_HOME")
    assert java.describe() == f"Java 21.0.2 at {tmp_path / 'jdk21' / 'bin' / 'java'} (from JAVA_HOME)"

    _fake_java(tmp_path / "jdk11", "11", "11.0.22")
    with pytest.raises(JavaError, match=r"^Java 11\.0\.22 at .*jdk11/bin/java \(from JAVA_HOME\) is too old"):
        find_java(env={"JAVA_HOME": str(tmp_path / "jdk11")})

    _fake_java(tmp_path / "jdk8", "1.8", "1.8.0_402")
    with pytest.raises(JavaError, match="too old"):
        find_java(tmp_path / "jdk8" / "bin" / "java")


def test_no_java_at_all_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(JavaError, match=r"^no Java found \(JAVA_HOME unset, no java on PATH\)"):
        find_java(env={"PATH": str(tmp_path)})
    with pytest.raises(JavaError, match=r"/nowhere/bin/java \(from JAVA_HOME\) is not an executable java"):
        find_java(env={"JAVA_HOME": "/nowhere"})


def test_a_node_has_a_quorum_listeners_and_the_test_tuning() -> None:
    props = server_properties(
        node_id=2,
        ports={"PLAINTEXT": 9001, "CONTROLLER": 9002, "SASL_SSL": 9003},
        voters={1: 8002, 2: 9002, 3: 7002},
        log_dir=Path("/data"),
        listeners=[
            Listener("SASL_SSL", "SASL_SSL", {"sasl.enabled.mechanisms": "SCRAM-SHA-512"}),
        ],
        overrides={"group.initial.rebalance.delay.ms": "3000", "min.insync.replicas": "2"},
    )
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:8002,2@127.0.0.1:9002,3@127.0.0.1:7002"
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:9001,SASL_SSL://127.0.0.1:9003,CONTROLLER://127.0.0.1:9002"
    )
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9001,SASL_SSL://127.0.0.1:9003"
    assert props["listener.security.protocol.map"] == (
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    )
    assert props["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "3000", "an override wins"
    assert props["min.insync.replicas"] == "2"
    assert props["log.dirs"] == "/data"


def test_listener_names_are_checked() -> None:
    with pytest.raises(ValueError, match="upper-case"):
        Listener("sasl")
    with pytest.raises(ValueError, match="the node's own"):
        Listener("CONTROLLER")
    with pytest.raises(ValueError, match="security protocol"):
        Listener("TLS", "TLS")


def test_properties_are_escaped_as_java_reads_them() -> None:
    text = render_properties(
        {
            "sasl.jaas.config": 'ScramLoginModule required username="a" password="p=w";',
            "odd key:=": " leading space\\and\nnewline",
            "unicode": "café ✓",
        }
    )
    assert text.splitlines() == [
        'sasl.jaas.config=ScramLoginModule required username="a" password="p=w";',
        "odd\\ key\\:\\==\\ leading space\\\\and\\nnewline",
        "unicode=caf\\u00e9 \\u2713",
    ]
    text.encode("latin-1")  # Kafka reads server.properties as ISO-8859-1


def test_cluster_ids_look_like_kafka_storage_random_uuid() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert all(set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for i in ids)


def test_a_taken_port_is_named_before_any_jvm_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not port_is_free(port)
        # a runtime that could not run anything: the port check must come first
        runtime = KafkaRuntime(
            find_java(_fake_java(tmp_path / "jdk", "17", "17.0.1")),
            KafkaDistribution("4.4.0", tmp_path / "none"),
        )
        kafka = LocalKafka(port=port, runtime=runtime, workdir=tmp_path / "kafka")
        taken_line = rf"^port 127\.0\.0\.1:{port} \(PLAINTEXT listener of kafka node 1\) is taken$"
        with pytest.raises(ServiceError, match=taken_line):
            kafka.start()
    assert not kafka.alive()
    assert not (tmp_path / "kafka").exists()
    assert port_is_free(port)


def test_a_cluster_takes_free_ports_only() -> None:
    with pytest.raises(ValueError, match="fixed ports are for a single node"):
        LocalKafka(nodes=3, port=9092)
    with pytest.raises(ValueError, match="nodes: 1 to 9"):
        LocalKafka(nodes=0)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_managed_process_freezes_thaws_stops_when_frozen_and_appends_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    first = ManagedProcess(argv, tmp_path, dict(os.environ), "out.log")
    deadline = time.monotonic() + 10
    while first.output() != "up\n":  # started for real before it is frozen
        assert time.monotonic() < deadline, "the child never printed"
        time.sleep(0.01)
    first.freeze()
    assert _state(first.pid) == first.state() == "T"
    first.thaw()
    assert _state(first.pid) != "T"
    first.freeze()
    first.stop(timeout_s=5)  # SIGTERM reaches a frozen process only after SIGCONT
    assert first.proc.returncode == -signal.SIGTERM
    second = ManagedProcess([sys.executable, "-c", "print('again')"], tmp_path, dict(os.environ), "out.log")
    assert second.proc.wait(10) == 0
    second.kill()
    assert (tmp_path / "out.log").read_text().splitlines() == ["up", "again"]
    assert second.output() == "again\n"


def test_the_make_step_reports_one_line_when_java_is_too_old(tmp_path: Path) -> None:
    _fake_java(tmp_path / "jdk11", "11", "11.0.22")
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "jdk11"), "ROUTEWORKER_CACHE_DIR": str(tmp_path / "c")}
    argv = [sys.executable, "-m", "worker.local.kafka_setup"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: Java 11.0.22 at ")
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"XDG_CACHE_HOME": "/xdg"},
        {"ROUTEWORKER_CACHE_DIR": "/explicit", "XDG_CACHE_HOME": "/xdg"},
    ],
)
def test_the_kafka_cache_shares_the_settings_cache_root(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name in ("ROUTEWORKER_CACHE_DIR", "XDG_CACHE_HOME", "ROUTEWORKER_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_cache_dir() == load_settings().cache_dir
