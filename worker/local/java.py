"""The Java runtime the private Kafka broker runs on: chosen explicitly, version-checked, named."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from worker.local.errors import JavaError

logger = logging.getLogger(__name__)

# Kafka 4.x brokers are built for Java 17 and refuse older runtimes
MINIMUM_FEATURE = 17
_SPEC = re.compile(r"^\s*java\.specification\.version\s*=\s*(\S+)\s*$", re.MULTILINE)
_VERSION = re.compile(r"^\s*java\.version\s*=\s*(\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class JavaRuntime:
    """A java executable, its version and where it was found (JAVA_HOME, PATH or given)."""

    executable: Path
    version: str
    feature: int
    source: str

    def describe(self) -> str:
        return f"Java {self.version} at {self.executable} (from {self.source})"


def find_java(
    explicit: Path | None = None,
    minimum: int = MINIMUM_FEATURE,
    env: Mapping[str, str] | None = None,
) -> JavaRuntime:
    """The java to run: ``explicit``, else $JAVA_HOME/bin/java, else `java` on PATH; at least ``minimum``."""
    env = os.environ if env is None else env
    if explicit is not None:
        executable, source = explicit, "the caller"
    elif env.get("JAVA_HOME"):
        executable, source = Path(env["JAVA_HOME"]) / "bin" / "java", "JAVA_HOME"
    else:
        found = shutil.which("java", path=env.get("PATH"))
        if found is None:
            raise JavaError(
                f"no Java found (JAVA_HOME unset, no java on PATH): Kafka needs Java {minimum}+; "
                "install openjdk-17-jre-headless (`make system`) or set JAVA_HOME"
            )
        # /usr/bin/java is a chain of alternatives links: name the JDK it leads to
        executable, source = Path(found).resolve(), "PATH"
    runtime = _probe(executable.absolute(), source)
    if runtime.feature < minimum:
        raise JavaError(
            f"{runtime.describe()} is too old: Kafka 4.x needs Java {minimum} or newer; "
            "set JAVA_HOME to a newer JDK (e.g. /usr/lib/jvm/temurin-25-jdk-amd64)"
        )
    return runtime


@functools.cache
def _probe(executable: Path, source: str) -> JavaRuntime:
    if not os.access(executable, os.X_OK):
        raise JavaError(f"{executable} (from {source}) is not an executable java")
    try:
        done = subprocess.run(
            [str(executable), "-XshowSettings:properties", "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaError(f"{executable} (from {source}) does not run: {exc}") from None
    spec, version = _SPEC.search(done.stderr), _VERSION.search(done.stderr)
    if done.returncode != 0 or spec is None:
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise JavaError(f"{executable} (from {source}) is not a usable java: {first}")
    text = spec.group(1)
    # Java 8 and older report "1.8"; from 9 on the specification version is the feature number
    feature = int(text.split(".")[1] if text.startswith("1.") else text.split(".")[0])
    return JavaRuntime(executable, version.group(1) if version else text, feature, source)
