import asyncio
import ssl
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.cluster import ClusterMetadata
from aiokafka.protocol.fetch import FetchRequest

class AIOKafkaClient:
    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        bootstrap_servers: str | list[str] = "localhost",
        client_id: str = ...,
        metadata_max_age_ms: int = 300000,
        request_timeout_ms: int = 40000,
        retry_backoff_ms: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        security_protocol: str = "PLAINTEXT",
        api_version: str | None = None,
        connections_max_idle_ms: int = 540000,
        sasl_mechanism: str = "PLAIN",
        sasl_plain_username: str | None = None,
        sasl_plain_password: str | None = None,
        sasl_kerberos_service_name: str = "kafka",
        sasl_kerberos_domain_name: str | None = None,
        sasl_oauth_token_provider: AbstractTokenProvider | None = None,
    ) -> None: ...
    async def bootstrap(self) -> None: ...
    async def close(self) -> None: ...
    async def fetch_all_metadata(self) -> ClusterMetadata: ...
    # the answer's struct depends on the version negotiated; only the Fetch request is typed here
    async def send(self, node_id: int, request: FetchRequest, *, group: Any = ...) -> Any: ...
