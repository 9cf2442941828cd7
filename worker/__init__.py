"""routeworker: a Kafka-native semantic router."""

__version__ = "0.1.0"

__all__ = ["__version__"]
