from typing_extensions import disjoint_base

@disjoint_base
class DefaultRecordBatchBuilder:
    @classmethod
    def estimate_size_in_bytes(
        cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
    ) -> int: ...
