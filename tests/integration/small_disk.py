"""A small filesystem of a test's own (a tmpfs), to fill: the route store's disk full."""

from __future__ import annotations

import subprocess
from pathlib import Path


class SmallDisk:
    """A tmpfs of ``size`` mounted for the scenario (root only; None where the machine refuses)."""

    def __init__(self, path: Path, size: str = "2m") -> None:
        self.path = path
        self.size = size
        self.mounted = False

    def mount(self) -> str | None:
        """Mount it; the reason it cannot be, or None."""
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        self.mounted = done.returncode == 0
        return None if self.mounted else (done.stderr.strip() or f"mount exited {done.returncode}")

    def fill(self) -> int:
        """Write a file until the filesystem is full; the bytes written."""
        written = 0
        with (self.path / "filler").open("wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
                    written += 65536
            except OSError:
                pass
        return written

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False
