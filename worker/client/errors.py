"""What can go wrong when asking the routers a question over Kafka."""

from __future__ import annotations


class RouteClientError(Exception):
    """The client cannot work: a topic is missing, or its reply reader stopped."""


class RouteTimeout(RouteClientError, TimeoutError):
    """No routed intent (and no dead letter) for the query within the call's timeout."""

    def __init__(self, query_id: str, timeout_s: float) -> None:
        super().__init__(f"no answer to query {query_id} within {timeout_s:g} s")
        self.query_id = query_id
        self.timeout_s = timeout_s


class QueryRejected(RouteClientError):
    """The routers dead-lettered the query; ``code`` and ``reason`` come from its DLQ record."""

    def __init__(self, query_id: str, code: str, reason: str) -> None:
        super().__init__(f"query {query_id} was dead-lettered: {code}: {reason}")
        self.query_id = query_id
        self.code = code
        self.reason = reason
