"""Errors of the mutation log: bad route files, missing topics, a replica that cannot go on."""

from __future__ import annotations

from dataclasses import dataclass


class ReplicationError(Exception):
    """The mutation log cannot be read or written as asked (fatal for the caller)."""


class TopicMissing(ReplicationError):
    """The mutation topic does not exist: run ``routeworker topics create``."""


#: the ``route`` of a problem with the file as a whole
FILE = "(file)"


@dataclass(frozen=True, slots=True)
class RouteProblem:
    """One thing wrong in a route file: which route (name or position), which field, and why."""

    route: str
    field: str
    reason: str

    def __str__(self) -> str:
        if self.route == FILE:
            return f"{self.field}: {self.reason}"
        return f"route {self.route}: {self.field}: {self.reason}"


class RouteFileError(ValueError):
    """A route file that must not be published; ``problems`` names each route and field at fault."""

    def __init__(self, source: str, problems: list[RouteProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")
