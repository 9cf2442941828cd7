"""Errors of the private services: each message is one line naming the cause."""

from __future__ import annotations


class ServiceError(RuntimeError):
    """A private service (broker, Redis) could not be prepared or started; nothing is left running.

    The first line of the message names the cause; when a process failed, its log's last lines follow.
    """


class KafkaDistError(ServiceError):
    """The Apache Kafka jars could not be resolved, or do not match their recorded checksums."""


class JavaError(ServiceError):
    """No usable Java runtime: none found, or too old for the broker."""
