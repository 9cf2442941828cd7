"""Rebalance listener: finish and commit in-flight work before partitions are given up."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

logger = logging.getLogger(__name__)

PartitionsHandler = Callable[[set[TopicPartition]], Awaitable[None]]


class DrainOnRevoke(ConsumerRebalanceListener):
    """Calls the pipeline's handlers; aiokafka logs and swallows listener errors, so an error here
    is passed to ``on_error`` (the pipeline then stops loudly) instead of vanishing."""

    def __init__(
        self,
        on_revoked: PartitionsHandler,
        on_assigned: PartitionsHandler,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned
        self._on_error = on_error

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._on_revoked(set(revoked))
        except Exception as error:  # re-raised by the pipeline's consume loop
            self._on_error(error)
            raise

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self._on_assigned(set(assigned))
        except Exception as error:  # re-raised by the pipeline's consume loop
            self._on_error(error)
            raise
