"""Ask and wait over Kafka: :class:`RouteClient` produces queries and waits for their routed intents."""

from worker.client.errors import QueryRejected, RouteClientError, RouteTimeout
from worker.client.route_client import RouteClient

__all__ = ["QueryRejected", "RouteClient", "RouteClientError", "RouteTimeout"]
