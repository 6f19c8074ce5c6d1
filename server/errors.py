"""A request's failure as a status-code name, free of grpc so that worker processes can raise and pickle it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Failure(Exception):
    """A request's failure: a gRPC status code name, a message, and BadRequest (field, description) violations."""

    code: str
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
