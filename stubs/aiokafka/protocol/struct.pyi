from typing import Any, ClassVar

from aiokafka.protocol.types import Schema

class Struct:
    SCHEMA: ClassVar[Schema]
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def get_item(self, name: str) -> Any: ...
