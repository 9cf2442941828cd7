"""The start-up access check's decisions without a broker: who is asked for what, and how a
refusal reads. (tests/integration/test_security.py runs it against Apache Kafka with ACLs.)"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from worker.config import load_settings
from worker.kafka_access import (
    KafkaAccessError,
    Need,
    Operation,
    _connection_cause,
    _denied,
    _describe,
    _hosts,
    check_access,
    principal,
    publisher_needs,
    worker_needs,
)
from worker.kafka_metadata import OPERATIONS_UNKNOWN

SASL = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "worker",
    "kafka_sasl_password": "pw-in-test",
}


def test_the_worker_needs_exactly_its_row_of_the_acl_table() -> None:
    settings = load_settings(
        topic_queries="q", topic_intents="i", topic_mutations="m", topic_dlq="d", group_id="g"
    )
    assert {str(n) for n in worker_needs(settings)} == {
        "READ on topic 'q'",
        "READ on topic 'm'",
        "DESCRIBE_CONFIGS on topic 'm'",
        "WRITE on topic 'i'",
        "WRITE on topic 'd'",
        "READ on group 'g'",
    }
    assert {str(n) for n in publisher_needs(settings)} == {"READ on topic 'm'", "WRITE on topic 'm'"}


def test_a_refusal_is_read_from_the_error_code_or_the_missing_operation_bit() -> None:
    write = Need("topic", "t", Operation.WRITE)
    read_and_describe = (1 << Operation.READ) | (1 << Operation.DESCRIBE)
    assert _denied(write, 0, read_and_describe)
    assert not _denied(write, 0, read_and_describe | (1 << Operation.WRITE))
    assert _denied(write, 29, OPERATIONS_UNKNOWN)  # TOPIC_AUTHORIZATION_FAILED: not even Describe
    # a topic that does not exist yet, a broker that cannot tell: not a refusal
    assert not _denied(write, 3, 0)
    assert not _denied(write, 0, OPERATIONS_UNKNOWN)
    group = Need("group", "g", Operation.READ)
    assert _denied(group, 30, OPERATIONS_UNKNOWN, refused=30)


def test_connection_failures_name_their_cause_and_never_the_password() -> None:
    settings = load_settings(**SASL, kafka_ssl_cafile=Path("/etc/ca.pem"))
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "unable to get local issuer certificate"
    causes = [
        _connection_cause(settings, "h:9093", untrusted),
        _connection_cause(settings, "h:9093", SaslAuthenticationFailed("invalid credentials")),
        _connection_cause(settings, "h:9093", KafkaConnectionError("Connection at h:9093 closed")),
        _connection_cause(settings, "h:9093", ConnectionRefusedError(111, "Connection refused")),
    ]
    assert causes[0].startswith("TLS: the certificate of h:9093 is not trusted (unable to get local issuer")
    assert "ROUTEWORKER_KAFKA_SSL_CAFILE=/etc/ca.pem" in causes[0]
    assert causes[1].startswith("SASL authentication of User:worker (SCRAM-SHA-512) refused by h:9093")
    assert "ROUTEWORKER_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in causes[2]
    assert causes[3] == "cannot connect to h:9093: ConnectionRefusedError: [Errno 111] Connection refused"
    assert all("pw-in-test" not in cause and "\n" not in cause for cause in causes)


async def test_an_unreadable_ca_file_is_named_before_any_connection() -> None:
    settings = load_settings(**SASL, kafka_ssl_cafile=Path("/nonexistent/ca.pem"))
    with pytest.raises(
        KafkaAccessError, match=r"^TLS: cannot load ROUTEWORKER_KAFKA_SSL_CAFILE=/nonexistent/ca\.pem"
    ):
        await check_access(settings, worker_needs(settings))


async def test_plaintext_has_no_principal_to_check() -> None:
    # nothing listens on port 1: a check that connected would fail
    await check_access(load_settings(kafka_bootstrap="127.0.0.1:1"), [Need("topic", "t", Operation.READ)])


def test_small_helpers() -> None:
    assert _hosts("a:9092, [::1]:9093,bad") == [("a", 9092), ("::1", 9093)]
    assert _describe(SaslAuthenticationFailed("x y")) == "SaslAuthenticationFailed: x y"
    assert principal(load_settings(**SASL)) == "User:worker"
    mtls = load_settings(
        kafka_security_protocol="SSL", kafka_ssl_certfile=Path("c.pem"), kafka_ssl_keyfile=Path("k.pem")
    )
    assert principal(mtls) == "the principal of the client certificate"


def test_sasl_needs_a_user_and_mutual_tls_a_certificate_and_its_key() -> None:
    with pytest.raises(ValueError, match="kafka_sasl_username is required"):
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN")
    with pytest.raises(ValueError, match="go together"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_certfile=Path("c.pem"))
