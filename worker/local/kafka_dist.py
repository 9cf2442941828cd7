"""The Apache Kafka broker's jars: resolved from Maven Central with mvn, checked, cached outside the clone.

``requirements/kafka/pom.xml`` names the broker at pinned versions; ``requirements/kafka/jars.sha256``
records the sha256 of every jar of its resolved runtime classpath. :func:`prepare_kafka` returns the
verified set under ``<cache_dir>/kafka/<version>-<key>`` (the key covers both files, so a change to
either resolves anew); a warm cache costs one checksum pass and no mvn. Run as a module, it is the
`make kafka` step: ``python -m worker.local.kafka_dist [prepare|record]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.local.errors import KafkaDistError
from worker.local.locks import exclusive

logger = logging.getLogger(__name__)

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements" / "kafka"
POM = REQUIREMENTS / "pom.xml"
RECORD = REQUIREMENTS / "jars.sha256"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KafkaDistribution:
    """A verified set of broker jars in the cache: what `java -cp` needs to run kafka.Kafka."""

    version: str
    root: Path

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    def jars(self) -> list[Path]:
        return sorted(self.lib.glob("*.jar"))

    def classpath(self) -> str:
        return ":".join(str(jar) for jar in self.jars())

    def size_bytes(self) -> int:
        return sum(jar.stat().st_size for jar in self.jars())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kafka_version(pom: Path = POM) -> str:
    """The version of org.apache.kafka:kafka_2.13 that the pom names."""
    for dep in _pom(pom).iterfind("m:dependencies/m:dependency", _POM_NS):
        if dep.findtext("m:artifactId", namespaces=_POM_NS) == "kafka_2.13":
            return dep.findtext("m:version", default="", namespaces=_POM_NS)
    raise KafkaDistError(f"{pom} names no org.apache.kafka:kafka_2.13 dependency")


def read_record(path: Path = RECORD) -> dict[str, str]:
    """The recorded checksums: jar file name -> sha256 (sha256sum's format; # starts a comment)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KafkaDistError(f"cannot read the Kafka jar checksums: {exc}") from None
    record = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise KafkaDistError(f"{path}:{number}: expected '<sha256>  <jar>', got {line!r}")
        record[parts[1].lstrip("*")] = parts[0]
    if not record:
        raise KafkaDistError(f"{path} records no jar")
    return record


def check_jars(lib: Path, record: Mapping[str, str], record_name: str = "jars.sha256") -> None:
    """Raise one line naming the first jar that is missing, unexpected, or not what ``record`` says."""
    present = {jar.name for jar in lib.glob("*.jar")}
    for name in sorted(record):
        if name not in present:
            raise KafkaDistError(f"Kafka jar {name} is missing from {lib} ({record_name} records it)")
        actual = sha256_file(lib / name)
        if actual != record[name]:
            raise KafkaDistError(
                f"checksum mismatch: Kafka jar {name} has sha256 {actual}, "
                f"{record_name} records {record[name]}"
            )
    extra = sorted(present - record.keys())
    if extra:
        raise KafkaDistError(f"unexpected Kafka jar {extra[0]} in {lib}: {record_name} does not record it")


def cache_key(pom: Path = POM, record: Path = RECORD) -> str:
    """Identity of a resolved set: what names it (the pom) and what it must be (the checksums)."""
    return hashlib.sha256(pom.read_bytes() + b"\0" + record.read_bytes()).hexdigest()[:12]


def distribution_dir(cache_dir: Path, pom: Path = POM, record: Path = RECORD) -> Path:
    return cache_dir / "kafka" / f"{kafka_version(pom)}-{cache_key(pom, record)}"


def prepare_kafka(
    cache_dir: Path | None = None,
    *,
    mvn: str = "mvn",
    mvn_args: Sequence[str] = (),
    pom: Path = POM,
    record: Path = RECORD,
    progress: Progress = logger.info,
) -> KafkaDistribution:
    """The verified broker jars, resolved with mvn first when the cache lacks them or they were altered.

    ``cache_dir`` defaults to :func:`default_cache_dir`, the same root as the model exports.
    """
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    expected = read_record(record)
    version = kafka_version(pom)
    root = distribution_dir(cache_dir, pom, record)
    with exclusive(cache_dir / "kafka" / ".lock"):
        if (root / "manifest.json").is_file():
            try:
                check_jars(root / "lib", expected, _shown(record))
                return KafkaDistribution(version, root)
            except KafkaDistError as exc:
                progress(f"{exc}; resolving the Kafka jars again")
        progress(f"resolving Apache Kafka {version} from Maven Central into {root}")
        staging = root.with_name(root.name + ".partial")
        _resolve(staging, mvn, mvn_args, pom, cache_dir / "logs" / "kafka-resolve.log")
        check_jars(staging / "lib", expected, _shown(record))
        manifest = {
            "kafka": version,
            "key": root.name,
            "jars": {jar.name: expected[jar.name] for jar in sorted((staging / "lib").glob("*.jar"))},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
        return KafkaDistribution(version, root)


def record_checksums(
    cache_dir: Path | None = None, *, mvn: str = "mvn", pom: Path = POM, record: Path = RECORD
) -> dict[str, str]:
    """Resolve the pom afresh and write what it resolved to ``record`` (after a version change)."""
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    staging = cache_dir / "kafka" / "record.partial"
    with exclusive(cache_dir / "kafka" / ".lock"):
        _resolve(staging, mvn, (), pom, cache_dir / "logs" / "kafka-resolve.log")
        sums = {jar.name: sha256_file(jar) for jar in sorted((staging / "lib").glob("*.jar"))}
        shutil.rmtree(staging, ignore_errors=True)
    header = (
        f"# sha256 of every jar of Apache Kafka {kafka_version(pom)}'s runtime classpath as\n"
        f"# requirements/kafka/pom.xml resolves it; written by `python -m worker.local.kafka_dist record`\n"
    )
    record.write_text(header + "".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return sums


def _resolve(staging: Path, mvn: str, mvn_args: Sequence[str], pom: Path, log: Path) -> None:
    executable = shutil.which(mvn)
    if executable is None:
        raise KafkaDistError(f"{mvn} not found on PATH: install Maven 3.8+ (`make system` installs it)")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "lib").mkdir(parents=True)
    # mvn runs on a copy of the pom so that nothing is written into the clone
    shutil.copyfile(pom, staging / "pom.xml")
    cmd = [
        executable, "-B", "-q", "--strict-checksums", "-Dstyle.color=never",
        "-f", str(staging / "pom.xml"), _copy_goal(pom), f"-DoutputDirectory={staging / 'lib'}",
        *mvn_args,
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        out.write(done.stdout)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaDistError(f"{_mvn_failure(done.stdout)} (mvn exit {done.returncode}; log {log})")


def _copy_goal(pom: Path) -> str:
    # fully qualified, so that mvn needs no plugin-prefix lookup (which hides an offline machine
    # behind "No plugin found for prefix"); the version is the one the pom pins
    for plugin in _pom(pom).iterfind("m:build/m:plugins/m:plugin", _POM_NS):
        if plugin.findtext("m:artifactId", namespaces=_POM_NS) == "maven-dependency-plugin":
            version = plugin.findtext("m:version", namespaces=_POM_NS)
            if version:
                return f"org.apache.maven.plugins:maven-dependency-plugin:{version}:copy-dependencies"
    raise KafkaDistError(f"{pom} pins no version of maven-dependency-plugin")


_TRANSFER = re.compile(r"Could not transfer (?:artifact|metadata) (\S+) from/to (\S+ \([^)]*\)): ([^\n]+)")


def _mvn_failure(output: str) -> str:
    transfer = _TRANSFER.search(output)
    if transfer is not None:
        artifact, repository, reason = transfer.groups()
        reason = reason.split(" -> [Help", 1)[0].strip()
        return f"Maven Central unreachable: cannot download {artifact} from {repository}: {reason}"
    errors = [line[len("[ERROR]") :].strip() for line in output.splitlines() if line.startswith("[ERROR]")]
    first = next((e for e in errors if e), "no error message")
    return f"mvn could not resolve the Kafka jars: {first[:400]}"


def _pom(pom: Path) -> ET.Element:
    try:
        return ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as exc:
        raise KafkaDistError(f"cannot read {pom}: {exc}") from None


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(REQUIREMENTS.parents[1]))
    except ValueError:
        return str(path)


def default_cache_dir() -> Path:
    """$ROUTEWORKER_CACHE_DIR, else $XDG_CACHE_HOME/routeworker, else ~/.cache/routeworker.

    The same root as the settings' ``cache_dir`` (the model exports), which this leaf of the package
    may not import; tests/unit/test_local_kafka.py checks that the two agree.
    """
    explicit = os.environ.get("ROUTEWORKER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "routeworker"


def main(argv: Sequence[str] | None = None) -> int:
    """`make kafka`: prepare (default) or record the broker's jars; one line on failure, exit 1."""
    parser = argparse.ArgumentParser(prog="python -m worker.local.kafka_dist", description=__doc__)
    parser.add_argument("action", nargs="?", choices=("prepare", "record"), default="prepare")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.action == "record":
            sums = record_checksums()
            logger.info("recorded %d jars in %s", len(sums), RECORD)
        else:
            dist = prepare_kafka()
            logger.info(
                "Apache Kafka %s ready: %d jars, %.1f MB in %s",
                dist.version, len(dist.jars()), dist.size_bytes() / 1e6, dist.root,
            )  # fmt: skip
    except KafkaDistError as exc:
        logger.error("error: %s", exc)  # one line, no traceback
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
