"""Why a running replica stopped, in one line: the root cause of its fatal error.

The replica's parts run in task groups (the replica's, the pipeline's), so a fatal error reaches
:func:`worker.app.run.run_worker` wrapped in one ``ExceptionGroup`` per level, and its traceback
buries the cause. :func:`stop_cause` unwraps the groups to their leaves and names the cause.

A cause an operator fixes outside the code is *known*: its line says it all and no traceback is
logged, as for the start-up failures (a refused TLS or SASL login, a missing ACL). Known causes:

- Kafka refuses an operation while the replica runs (a permission removed: topic, group, cluster
  or transactional-id authorization);
- the route store cannot be written (the SQLite store, or its index files: a full disk, a
  read-only filesystem); the line names the store path and the free space of its filesystem;
- the output cannot be delivered (:class:`worker.pipeline.produce_policy.ProduceError`: a
  non-retriable produce error, or retries past the deadline; its message names the Kafka error).

Any other error is a bug or unforeseen: its line names the root cause and the traceback follows.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from worker.kafka_access import KafkaAccessError
from worker.pipeline.produce_policy import ProduceError

_REFUSED = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
# what a write gets from a filesystem that cannot take it
_UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})


@dataclass(frozen=True, slots=True)
class StopCause:
    """The line that names why the replica stopped; ``known``: no traceback is needed."""

    line: str
    known: bool
    error: BaseException


def leaves(error: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, in order; ``[error]`` for a plain one."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def stop_cause(error: BaseException, store_path: Path) -> StopCause:
    """The cause of the fatal ``error`` of a replica whose route store is ``store_path``.

    Of several leaves (parts that failed at once) the first known one is named, else the first.
    """
    found = leaves(error)
    causes = [_cause(leaf, store_path) for leaf in found]
    cause = next((c for c in causes if c.known), causes[0])
    if len(found) > 1:
        others = ", ".join(_describe(c.error) for c in causes if c is not cause)
        return StopCause(f"{cause.line} (also failed: {others})", cause.known, cause.error)
    return cause


def _cause(error: BaseException, store_path: Path) -> StopCause:
    chain = _chain(error)
    refused = next((e for e in chain if isinstance(e, _REFUSED)), None)
    if refused is not None:
        return StopCause(f"Kafka refuses access while running: {_describe(refused)}", True, error)
    if isinstance(error, KafkaAccessError):
        return StopCause(f"Kafka refuses access: {error}", True, error)
    unwritable = next((e for e in chain if _is_unwritable(e)), None)
    if unwritable is not None:
        where = _filesystem(store_path)
        line = f"the route store cannot be written: {_describe(unwritable)} ({where})"
        return StopCause(line, True, error)
    if isinstance(error, ProduceError):
        return StopCause(f"the output cannot be delivered: {error}", True, error)
    return StopCause(_describe(error), False, error)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from (``__cause__``, else ``__context__``), with the
    broker's refusal a :class:`ProduceError` stands for."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        if isinstance(current, ProduceError) and current.refusal is not None:
            chain.append(current.refusal)  # the broker's refusal it stands for
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _is_unwritable(error: BaseException) -> bool:
    # SQLite reports a full disk as SQLITE_FULL, or as SQLITE_IOERR when the write itself failed
    if isinstance(error, sqlite3.OperationalError):
        text = str(error)
        return "disk" in text or "readonly" in text or "read-only" in text
    return isinstance(error, OSError) and error.errno in _UNWRITABLE


def _filesystem(store_path: Path) -> str:
    """Where the store lives and how much room its filesystem has left."""
    target = store_path.resolve()  # a store path may be a link to another filesystem
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError as error:
        return f"store {target}; its filesystem cannot be asked: {error.strerror}"
    return f"store {target}, on a filesystem with {free:,} bytes free"


def _describe(error: BaseException) -> str:
    """``ClassName: message`` once (aiokafka's messages already start with the class name)."""
    name = type(error).__name__
    if type(error).__module__ == "sqlite3":
        name = f"sqlite3.{name}"  # "OperationalError" alone does not say it is the database
    text = " ".join(str(error).split())
    if not text or text == name:
        return name
    return text if type(error).__name__ in text else f"{name}: {text}"
