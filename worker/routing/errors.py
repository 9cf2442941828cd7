"""Errors raised by the routing engine."""

from __future__ import annotations


class RoutingError(Exception):
    """Base class of routing-engine errors."""


class InvalidRoute(RoutingError, ValueError):
    """A route definition or its vectors are inconsistent."""


class DimensionMismatch(RoutingError, ValueError):
    """Vectors have a different dimension from the route table or the model."""


class FingerprintMismatch(RoutingError, ValueError):
    """Vectors were made by a different embedding model than the one this table serves."""


class StoreError(RoutingError):
    """The route store cannot be used as asked."""


class SchemaTooNew(StoreError):
    """The store was written by a newer routeworker (a newer schema) than this one understands."""


class OffsetRegression(StoreError):
    """A mutation-log offset would move backwards: the store is ahead of the log it is fed from."""


class IndexBuildFailed(RoutingError):
    """Building the main index failed (the table keeps serving from its overlay)."""


class EncoderError(RoutingError):
    """The embedding model cannot be loaded or used."""
