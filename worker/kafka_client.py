"""Connection options (bootstrap, client id, TLS, SASL) shared by every aiokafka client of the worker."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from worker.config import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options (bootstrap, client id, TLS, SASL) for any aiokafka client.

    The one place security settings become client options: every consumer, producer and admin
    client of the worker and the CLI is made with these (and :mod:`worker.kafka_access` checks them).
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": settings.kafka_client_id,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        key_password = settings.kafka_ssl_key_password
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password=key_password.get_secret_value() if key_password else None,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options
