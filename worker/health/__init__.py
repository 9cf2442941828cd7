"""Health and metrics endpoints of a replica (`/livez`, `/readyz`, `/metrics`) and the probe client.

The server (:mod:`worker.health.server`, aiohttp) is imported where it runs; this package's own
import stays the standard library's, because the container health check (``python -m
worker.health``) runs every few seconds.
"""

from worker.health.probe import probe

__all__ = ["probe"]
