"""Errors of the query pipeline. Bad input is never one of them: it goes to the DLQ."""

from __future__ import annotations


class PipelineError(Exception):
    """The pipeline cannot go on; the worker stops with a non-zero exit code."""


class ShutdownTimeout(PipelineError):
    """In-flight work did not finish within ``shutdown_timeout_s``; its offsets stay uncommitted."""
