"""Counters of a route replica (exported as metrics and written by the replica's status file)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class ReplicaStats:
    """What a replica did with the mutation log since it started. Mutated only by its replica."""

    #: mutation records read (valid or not)
    records: int = 0
    #: records read before the replica became ready (replay of what the store did not hold yet)
    replayed_on_start: int = 0
    #: net route upserts and deletions written to the store and the table
    applied: int = 0
    #: records skipped because they cannot be applied: malformed, rejected, or a route the model
    #: cannot embed (each logged with its position; the route is absent until a usable record)
    skipped_malformed: int = 0
    #: routes applied with the vectors shipped in their record
    shipped: int = 0
    #: routes embedded here because their record carried no vectors
    embedded: int = 0
    #: routes embedded here because their shipped vectors came from another model
    re_embedded: int = 0
    #: routes whose utterances were unchanged: their current vectors were kept
    reused: int = 0
    #: store transactions (one per batch of records)
    batches: int = 0
    #: full replays of the log instead of a resume (store ahead of the topic, offsets below the log
    #: start, away longer than tombstones are kept: :mod:`worker.replication.resume`)
    rebuilt_from_log: int = 0
    #: routes re-embedded at start because the store held vectors of another model
    re_embedded_at_open: int = 0
    #: live batches that waited for an index rebuild because the overlay was full
    apply_waits: int = 0
    #: calibration records decoded and put into service (with the batch that carried them)
    calibrations: int = 0
    #: calibration records made with another model's vectors (none is served then)
    calibrations_of_other_models: int = 0
    #: fields this version does not know, ignored in applied records (a newer writer added them)
    unknown_fields: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return asdict(self)
