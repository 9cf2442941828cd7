import abc

class FetchRequest(metaclass=abc.ABCMeta):
    def __init__(
        self,
        max_wait_time: int,
        min_bytes: int,
        max_bytes: int,
        isolation_level: int,
        topics: list[tuple[str, list[tuple[int, int, int]]]],
        rack_id: str = "",
    ) -> None: ...
