import abc
from collections.abc import Awaitable

from aiokafka.structs import TopicPartition

class ConsumerRebalanceListener(abc.ABC):
    # aiokafka awaits what these return when it is awaitable (the worker's handlers are coroutines)
    @abc.abstractmethod
    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> Awaitable[None] | None: ...
    @abc.abstractmethod
    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> Awaitable[None] | None: ...

class AbstractTokenProvider(abc.ABC):
    @abc.abstractmethod
    async def token(self) -> str: ...
