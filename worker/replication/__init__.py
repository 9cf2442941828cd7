"""The route mutation log: publishing route changes, and replicas that replay and tail it.

The compacted ``route-mutations`` topic is the source of truth; each replica folds it into its
SQLite store and route table (see :class:`RouteReplica`).
"""

from worker.replication.apply import (
    Calibrate,
    apply_routes,
    calibrate_plan,
    calibration_is_current,
    delete_routes,
    embedded_plan,
    plan_routes,
    planned_routes,
    publish_calibration,
    publish_plan,
    route_vectors,
)
from worker.replication.calibrations import calibration_of, calibration_record
from worker.replication.errors import ReplicationError, RouteFileError, RouteProblem, TopicMissing
from worker.replication.events import ReplicaEvents
from worker.replication.fold import FoldedMutations, SkippedRecord, fold
from worker.replication.guard import LogMoved, PublishHooks, admin_transactional_id
from worker.replication.log import LogState, read_routes
from worker.replication.plan import MutationPlan, RouteChange, describe_difference, plan_changes
from worker.replication.publisher import MutationPublisher, PublishReceipt
from worker.replication.replica import RouteReplica
from worker.replication.resume import ReplayReason, ResumeVerdict, TopicRetention, judge_resume
from worker.replication.routefile import load_route_file, parse_routes
from worker.replication.stats import ReplicaStats
from worker.replication.topics import TopicSpec, TopicStatus, ensure_topics, topic_specs
from worker.replication.vectors import (
    attach_embeddings,
    embed_routes,
    route_of,
    shipped_vectors,
    with_embeddings,
)

__all__ = [
    "Calibrate",
    "FoldedMutations",
    "LogMoved",
    "LogState",
    "MutationPlan",
    "MutationPublisher",
    "PublishHooks",
    "PublishReceipt",
    "ReplayReason",
    "ReplicaEvents",
    "ReplicaStats",
    "ReplicationError",
    "ResumeVerdict",
    "RouteChange",
    "RouteFileError",
    "RouteProblem",
    "RouteReplica",
    "SkippedRecord",
    "TopicMissing",
    "TopicRetention",
    "TopicSpec",
    "TopicStatus",
    "admin_transactional_id",
    "apply_routes",
    "attach_embeddings",
    "calibrate_plan",
    "calibration_is_current",
    "calibration_of",
    "calibration_record",
    "delete_routes",
    "describe_difference",
    "embed_routes",
    "embedded_plan",
    "ensure_topics",
    "fold",
    "judge_resume",
    "load_route_file",
    "parse_routes",
    "plan_changes",
    "plan_routes",
    "planned_routes",
    "publish_calibration",
    "publish_plan",
    "read_routes",
    "route_of",
    "route_vectors",
    "shipped_vectors",
    "topic_specs",
    "with_embeddings",
]
