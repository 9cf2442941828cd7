from typing import Any

from aiokafka.protocol.api import Request

class FindCoordinatorRequest(Request[Any]):
    def __init__(self, coordinator_key: str, coordinator_type: int) -> None: ...
    def build(self, request_struct_class: type[Any]) -> Any: ...
