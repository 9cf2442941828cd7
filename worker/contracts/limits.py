"""Size limits of incoming messages; configurable through settings, enforced before parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: what a reader does with fields it does not know (see ``worker.contracts.evolution``)
ContractMode = Literal["tolerant", "strict"]

# Hard bounds written into the JSON Schema; the configurable limits below may only tighten them.
MAX_ID_CHARS = 256
MAX_ROUTE_NAME_CHARS = 200
MAX_TOP_N = 100


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied to every decoded message, and how queries treat fields this version does not know.

    ``contract_mode`` governs queries only: ``tolerant`` ignores (and counts) unknown fields,
    ``strict`` dead-letters the query. Route mutations are always read tolerantly, whatever the
    mode, so replicas configured differently still hold the same table.
    """

    max_message_bytes: int = 64 * 1024
    max_text_chars: int = 4_000
    max_top_n: int = 20
    max_mutation_bytes: int = 8 * 1024 * 1024
    contract_mode: ContractMode = "tolerant"
