"""A request's failure as a status-code name, free of grpc so that worker processes can raise and pickle it."""
from __future__ import annotations

from dataclasses import dataclass, field

MESSAGE_LIMIT = 512
"""Characters of a status message kept; with at most ``VIOLATIONS_LIMIT`` violations of ``VIOLATION_LIMIT``
characters a status stays far below gRPC's 16 KiB metadata limit (percent-encoded, as sent)."""
VIOLATIONS_LIMIT = 4
VIOLATION_LIMIT = 128


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and its end (where a message says what
    to do) and noting its full length."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... ({len(text)} characters) ... {text[-half:]}"


@dataclass
class Failure(Exception):
    """A request's failure: a gRPC status code name, a message, and BadRequest (field, description) violations,
    all cut to lengths any status can carry (a safety net: echoed caller names are already cut)."""

    code: str
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.message = clip(self.message, MESSAGE_LIMIT)
        self.violations = [(clip(k, VIOLATION_LIMIT), clip(d, VIOLATION_LIMIT)) for k, d in self.violations[:VIOLATIONS_LIMIT]]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def stopped(cancelled: bool, exc: Exception) -> Failure:
    """The status of a run its interrupt hook stopped (``exc``, the engine's ``Interrupted``): CANCELLED when its
    call was cancelled, else DEADLINE_EXCEEDED; the same from a worker (``worker.Stop``) and from the local lane."""
    if cancelled:
        return Failure("CANCELLED", f"the call was cancelled while computing; the work was stopped ({exc})")
    return Failure("DEADLINE_EXCEEDED", f"the deadline passed while computing; the work was stopped ({exc})")
