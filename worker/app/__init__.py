"""The application layer: a replica assembled from its parts, and the processes that run it.

It is the composition root. Below it, the query pipeline (:mod:`worker.pipeline`) and the mutation
log (:mod:`worker.replication`) do not know each other; here a route replica's live table is
handed to the pipeline's router, the embedding cache and the health server are attached, and the
process's signals are handled. The command line (:mod:`worker.cli`) is the only layer above.
"""

from worker.app.route_replica import StatusWriter, serve_replica
from worker.app.run import run_worker
from worker.app.serving import (
    CalibrationWatch,
    head_serves,
    scoring_config,
    self_fit_config,
    serving_router,
)
from worker.app.worker import EncoderFactory, Replica, ReplicaFactory, ReplicaWorker, route_replica

__all__ = [
    "CalibrationWatch",
    "EncoderFactory",
    "Replica",
    "ReplicaFactory",
    "ReplicaWorker",
    "StatusWriter",
    "head_serves",
    "route_replica",
    "run_worker",
    "scoring_config",
    "self_fit_config",
    "serve_replica",
    "serving_router",
]
