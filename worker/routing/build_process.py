"""Starting the index build process, and its scheduling class while it runs.

The process starts in Linux's idle class (it runs only on a CPU nothing else wants) and, if no
CPU came free within ``IndexSettings.build_idle_s``, goes on at the niceness it inherited.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from worker.routing.errors import IndexBuildFailed

logger = logging.getLogger(__name__)

#: the module the build process runs (``python -m worker.routing.build_child JOB_FOLDER``)
CHILD_MODULE = "worker.routing.build_child"


def run_build_process(job: Path, idle_s: float | None) -> None:
    """Run the build process; idle (only on a free CPU) for its first ``idle_s`` seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
    with subprocess.Popen(
        [sys.executable, "-m", CHILD_MODULE, str(job)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as child:
        # Waiting in communicate() releases the GIL for the whole build.
        idle = idle_s is not None and set_idle(child.pid, True)
        try:
            _, errors = child.communicate(timeout=idle_s if idle else None)
        except subprocess.TimeoutExpired:
            # Starved (no CPU came free): the inherited niceness gives it a share of a busy one.
            logger.info("index build process idle for %.0fs without finishing: giving it its share", idle_s)
            set_idle(child.pid, False)
            _, errors = child.communicate()
    if child.returncode != 0:
        tail = errors.decode(errors="replace").strip().splitlines()[-5:]
        raise IndexBuildFailed(f"index build process exited with {child.returncode}: {' | '.join(tail)}")


def set_idle(pid: int, idle: bool) -> bool:
    """Put process ``pid`` in (or out of) the idle scheduling class (Linux); whether it worked.

    An idle process runs only on a CPU nothing else wants: a search thread waking up takes the CPU
    at once, where beside a niced build it waited up to 24 ms (benchmarks/engine.py).
    """
    policy = getattr(os, "SCHED_IDLE", None) if idle else getattr(os, "SCHED_OTHER", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(pid, policy, os.sched_param(0))
    except OSError:  # the process has exited, or the system refuses
        return False
    return True
