"""A probe client for container health checks: ``python -m worker.health [/livez|/readyz]``.

Docker's ``HEALTHCHECK`` and compose's ``healthcheck`` run it inside the container, where neither
curl nor wget exists in a slim image. The port is the replica's ``ROUTEWORKER_HEALTH_PORT``.
Exit status 0 means the endpoint answered 200; anything else (an error status, a refused or timed
out connection, no port configured) exits 1 with the reason on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
from collections.abc import Sequence

# Spelled out rather than imported from worker.config: the probe runs every few seconds in the
# container and must stay a stdlib-only import (tests/unit/test_health_server.py checks the name).
PORT_ENV = "ROUTEWORKER_HEALTH_PORT"


def probe(
    port: int, path: str = "/livez", host: str = "127.0.0.1", timeout_s: float = 3.0
) -> tuple[int, str]:
    """GET ``path`` once; return the status code and the body text."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", errors="replace")
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: exit 0 when the endpoint answers 200."""
    parser = argparse.ArgumentParser(prog="python -m worker.health", description=__doc__)
    parser.add_argument("path", nargs="?", default="/livez", choices=["/livez", "/readyz", "/metrics"])
    parser.add_argument("--port", type=int, default=None, help=f"default: ${PORT_ENV}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    # read the one variable directly: a health check must not depend on the rest of the settings
    port = args.port if args.port is not None else os.environ.get(PORT_ENV)
    if port is None:
        print(f"health probe: {PORT_ENV} is not set", file=sys.stderr)
        return 1
    try:
        status, body = probe(int(port), args.path, args.host, args.timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"health probe: {args.path}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"health probe: {args.path}: {status} {body.strip()}", file=sys.stderr)
        return 1
    return 0
