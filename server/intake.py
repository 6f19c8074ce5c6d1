"""Receive-side admission: the request bytes the server process receives or holds at once, bounded in bytes.

gRPC takes in a whole request message when a handler asks for it, and says nothing of its size before
that (until then it keeps only the call's flow-control window). So a unary handler asks for its message
only when its lane has room to receive the largest message gRPC accepts (``max_message_bytes``), and
then counts the message's actual size among the messages held by their handlers (``max_queued_bytes``)
until the handler returns, refusing it at once when they do not fit.

Two lanes, each first come first served: the large lane (Grad, Run and RegisterNetwork calls) receives
as many messages at once as ``max_receive_bytes`` holds largest messages; the small lane (every other
method, and calls whose ``gradserve-request-bytes`` metadata declares at most ``SMALL_BYTES``) one at a
time, so that health checks and tiny gradients never wait behind large uploads. A message larger than
its call declared is refused, so each lane stays bounded whatever callers send."""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import grpc

from gradserve.proto.codec import REQUEST_BYTES_HEADER as DECLARED

from .errors import Failure

SMALL_BYTES = 64 << 10
"""A call declaring at most this many request bytes is received in the small lane; a message this small
is never refused for want of room (each gRPC thread holds at most one)."""
LARGE_METHODS = frozenset(f"/gradserve.v1.Gradient/{name}" for name in ("Grad", "Run", "RegisterNetwork"))
"""Unary methods whose requests carry tensors or networks: received in the large lane unless declared small."""
WAIT_SLICE_SECONDS = 0.25
"""How often a handler waiting for its turn to receive looks whether its call is still alive."""


@dataclass
class Lane:
    """Handlers taking turns to receive: ``slots`` messages at once (each counted as the largest)."""

    slots: int
    receiving: int = 0
    line: collections.deque[object] = field(default_factory=collections.deque)

    def turn(self, ticket: object) -> bool:
        """Whether ``ticket`` is first in line and a slot is free."""
        return self.receiving < self.slots and self.line[0] is ticket


class Intake:
    """The two lanes (``receiving_limit`` // ``largest`` slots in the large one, at least one; one in the
    small one) and the bytes received and not yet answered (up to ``held_limit``); a limit of 0 is none."""

    def __init__(self, receiving_limit: int, largest: int, held_limit: int) -> None:
        self.largest = largest
        self.held_limit = held_limit
        self.bounded = bool(receiving_limit)
        self.large = Lane(max(1, receiving_limit // largest) if receiving_limit and largest else 1)
        self.small = Lane(1)
        self.held = 0
        """Bytes of the messages received whose handlers have not returned."""
        self.freed = 0
        """Running total of the bytes of messages over ``SMALL_BYTES`` whose handlers returned."""
        self._room = threading.Condition()

    def _wait_turn(self, lane: Lane, context: grpc.ServicerContext) -> bool:
        """Wait for this handler's turn in ``lane`` and take a slot; False when the call ended first."""
        ticket = object()
        with self._room:
            lane.line.append(ticket)
            while not self._room.wait_for(lambda: lane.turn(ticket), WAIT_SLICE_SECONDS):
                if not context.is_active():
                    lane.line.remove(ticket)
                    self._room.notify_all()
                    return False
            lane.line.popleft()
            lane.receiving += 1
            self._room.notify_all()
        return True

    def receive(self, method: str, messages: Iterator[Any], context: grpc.ServicerContext) -> tuple[Any, int] | None:
        """The one (message, size) of a unary call's ``messages`` (the deserializer's pairs), asked for in
        its lane's turn; None when the call ended first or carried no message. The size stays counted as
        held until ``release``; raises Failure when it does not fit or exceeds what the call declared."""
        declared = _declared(context)
        lane = self.small if method not in LARGE_METHODS or (declared is not None and declared <= SMALL_BYTES) else self.large
        if self.bounded and not self._wait_turn(lane, context):
            return None
        try:
            message, size = next(messages, (None, 0))
        except grpc.RpcError:  # the call was cancelled while its message was on its way
            message, size = None, 0
        finally:
            if self.bounded:
                with self._room:
                    lane.receiving -= 1
                    self._room.notify_all()
        if message is None:
            return None
        if declared is not None and size > declared:
            raise Failure("INVALID_ARGUMENT", f"{method}: the request is {size} bytes, more than the {declared} its "
                          f"{DECLARED} metadata declares", [(DECLARED, "smaller than the request")])
        self.hold(size)
        return message, size

    def hold(self, size: int) -> None:
        """Count ``size`` received bytes as held, or refuse them (RESOURCE_EXHAUSTED) when they do not fit."""
        with self._room:
            held = self.held
            if size <= SMALL_BYTES or not self.held_limit or held + size <= self.held_limit:
                self.held = held + size
                return
        raise Failure("RESOURCE_EXHAUSTED", f"this request is {size} bytes and the requests waiting or being computed "
                      f"hold {held}, together over the max_queued_bytes limit of {self.held_limit}; "
                      "retry later, or send smaller requests")

    def release(self, size: int) -> None:
        """A handler holding ``size`` bytes returned."""
        with self._room:
            self.held -= size
            if size > SMALL_BYTES:
                self.freed += size


def _declared(context: grpc.ServicerContext) -> int | None:
    """The request size the call's ``DECLARED`` metadata states, or None (absent or not a decimal number)."""
    for key, value in context.invocation_metadata():
        if key == DECLARED:
            text = value if isinstance(value, str) else ""
            return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None
    return None
