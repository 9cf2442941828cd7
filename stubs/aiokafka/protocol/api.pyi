import abc
from typing import ClassVar, Generic, TypeVar

from aiokafka.protocol.struct import Struct
from aiokafka.protocol.types import Schema

T = TypeVar("T", bound=RequestStruct)

class Response(Struct, metaclass=abc.ABCMeta):
    @property
    @abc.abstractmethod
    def API_KEY(self) -> int: ...
    @property
    @abc.abstractmethod
    def API_VERSION(self) -> int: ...

class RequestStruct(Struct, metaclass=abc.ABCMeta):
    FLEXIBLE_VERSION: ClassVar[bool]
    API_KEY: ClassVar[int]
    API_VERSION: ClassVar[int]
    RESPONSE_TYPE: ClassVar[type[Response]]

class Request(abc.ABC, Generic[T]):
    API_KEY: ClassVar[int]
    ALLOW_UNKNOWN_API_VERSION: ClassVar[bool]
    @abc.abstractmethod
    def build(self, request_struct_class: type[T]) -> T: ...
