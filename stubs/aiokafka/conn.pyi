import ssl
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.protocol.api import Request

class AIOKafkaConnection:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "aiokafka",
        request_timeout_ms: int = 40000,
        ssl_context: ssl.SSLContext | None = None,
        security_protocol: str = "PLAINTEXT",
        max_idle_ms: int | None = None,
        on_close: Any = None,
        sasl_mechanism: str | None = None,
        sasl_plain_password: str | None = None,
        sasl_plain_username: str | None = None,
        sasl_kerberos_service_name: str = "kafka",
        sasl_kerberos_domain_name: str | None = None,
        sasl_oauth_token_provider: AbstractTokenProvider | None = None,
    ) -> None: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    # the answer's struct depends on the request; callers read it with Struct.get_item
    def send(self, request: Request[Any], expect_response: bool = True) -> Any: ...
    def close(self, reason: Any = None, exc: BaseException | None = None) -> Any: ...

async def create_conn(
    host: str,
    port: int,
    *,
    client_id: str = "aiokafka",
    request_timeout_ms: int = 40000,
    ssl_context: ssl.SSLContext | None = None,
    security_protocol: str = "PLAINTEXT",
    max_idle_ms: int | None = None,
    on_close: Any = None,
    sasl_mechanism: str | None = None,
    sasl_plain_username: str | None = None,
    sasl_plain_password: str | None = None,
    sasl_kerberos_service_name: str = "kafka",
    sasl_kerberos_domain_name: str | None = None,
    sasl_oauth_token_provider: AbstractTokenProvider | None = None,
) -> AIOKafkaConnection: ...
