"""Receive-side admission: the request bytes the server process receives or holds at once, bounded in bytes.

gRPC takes in a whole request message when a handler asks for it, and says nothing of its size before
that (until then it keeps only the call's flow-control window). So a unary handler asks for its message
only when its lane has room to receive the largest message gRPC accepts (``max_message_bytes``), and
then counts the message's actual size among the messages held by their handlers (``max_queued_bytes``)
until the handler returns, refusing it at once when they do not fit.

Five lanes, each served round robin over the callers' connections: health checks one at a time in their own, each
given ``HEALTH_RECEIVE_SECONDS`` to deliver its message; the large lane (Grad, Run and
RegisterNetwork calls) receives as many messages at once as ``max_receive_bytes`` holds largest messages;
the small lane (every other unary method and calls whose ``gradserve-request-bytes`` metadata declares at
most ``SMALL_BYTES``) one at a time, so that ServerInfo and tiny gradients never wait behind large
uploads; the stream lane as many GradStream messages at once as ``max_stream_receive_bytes`` holds largest
messages (a stream asks for its next message only in its turn, so open streams cost their flow-control windows,
not a message each; a stream waiting for its client's next message holds its turn, which stalls other streams
only); and one message at a time of other services' request streams (gRPC reflection's), which stall only each
other. A message larger than its call declared is refused, so each lane stays bounded whatever callers send. A
unary call whose message has not arrived by its deadline (the server's: its own, else ``default_deadline_ms``, at
most ``max_deadline_ms``; in the small lane at most ``SMALL_RECEIVE_SECONDS`` after it took its turn) while others
wait in its lane is cancelled by them, so that a caller that never sends its message (or stalls half way) holds a
lane no longer than that. At most ``max_receive_waiting`` calls wait for a turn in the
large lane in each of its two rounds (each costs a gRPC thread and its flow-control window); beyond
that a call is refused at once.
Round robin per connection keeps a caller that does not declare its size from waiting behind every
upload another caller queued: it waits for at most one turn per other connection with calls waiting;
and a connection whose last message in the large lane was small goes ahead of the others, so a caller
sending small requests undeclared waits for the uploads being received only (``Lane``)."""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import grpc

from gradserve.proto.codec import REQUEST_BYTES_HEADER as DECLARED

from .errors import Failure
from .jsonlog import log

SMALL_BYTES = 64 << 10
"""A call declaring at most this many request bytes is received in the small lane; a message this small
is never refused for want of room (each gRPC thread holds at most one)."""
LARGE_METHODS = frozenset(f"/gradserve.v1.Gradient/{name}" for name in ("Grad", "Run", "RegisterNetwork"))
"""Unary methods whose requests carry tensors or networks: received in the large lane unless declared small."""
HEALTH_METHODS = frozenset(f"/grpc.health.v1.Health/{name}" for name in ("Check", "Watch"))
"""Received in a lane of their own (``Intake.health``): a probe (kubelet's times out after 2 s) must never wait behind
another method's call, nor long behind a health check that does not send its message (health checks need no token)."""
PEERS_KEPT = 4096
"""Connections remembered as sending small messages (the most recent ones)."""
WAIT_SLICE_SECONDS = 0.25
"""How often a handler waiting for its turn to receive looks whether its call is still alive."""
SMALL_RECEIVE_SECONDS = 10.0
"""How long a unary call in the small lane has to deliver its message once it takes its turn, when its deadline is
later: the message is at most ``SMALL_BYTES``, so a caller slower than that is stalling, and every ServerInfo and
declared-small call waits behind it."""
HEALTH_RECEIVE_SECONDS = 0.5
"""``SMALL_RECEIVE_SECONDS`` for health checks: their message is a few bytes, which gRPC has as a rule received with the
call's headers, and a probe waits at most one such turn per other connection probing."""


Round = collections.OrderedDict
"""Tickets by peer, in the order the peers get their next turn."""


@dataclass
class Lane:
    """Handlers taking turns to receive: ``slots`` messages at once (each counted as the largest). The
    waiting ones are served round robin over their callers' connections, so that a caller waits for one
    turn of each other caller, not behind all the uploads another queued; and callers whose last message
    was small (``ahead``) before the others, so that a caller that sends small requests without declaring
    them waits for at most the uploads being received. A caller that sent a large message after small
    ones loses its place ahead, so this costs the others at most one turn per small message it sent."""

    slots: int
    receiving: int = 0
    ahead: Round[str, collections.deque[object]] = field(default_factory=Round)
    line: Round[str, collections.deque[object]] = field(default_factory=Round)
    waiting: int = 0
    """Tickets in ``ahead`` and ``line``."""
    inbound: dict[Any, float] = field(default_factory=dict)
    """The calls of unary handlers receiving their message in this lane, with the deadline by which it must have arrived
    (``Intake._overdue`` cancels them after it)."""
    receive_seconds: float = 0.0
    """How long a unary call that takes a slot here has to deliver its message, when its deadline is later (0: until its
    deadline)."""

    def expect(self, context: Any, deadline: float | None) -> None:
        """Note that ``context``, taking a slot now, must deliver its message by its ``deadline``, or ``receive_seconds``
        from now when that is sooner (nothing to note when neither bounds it)."""
        if self.receive_seconds:
            cap = time.monotonic() + self.receive_seconds
            deadline = cap if deadline is None or deadline > cap else deadline
        if deadline is not None:
            self.inbound[context] = deadline

    def join(self, peer: str, ticket: object, ahead: bool = False) -> None:
        """Line ``ticket`` up behind its ``peer``'s earlier ones (a new peer comes last in its round)."""
        (self.ahead if ahead else self.line).setdefault(peer, collections.deque()).append(ticket)
        self.waiting += 1

    def in_round(self, ahead: bool) -> int:
        """Tickets waiting in the ``ahead`` round, or in the other one."""
        return sum(map(len, (self.ahead if ahead else self.line).values()))

    def _round(self) -> Round[str, collections.deque[object]]:
        return self.ahead or self.line

    def turn(self, ticket: object) -> bool:
        """Whether ``ticket`` is next (the first of the first peer in the round) and a slot is free (never for a ticket
        ``drop_ended`` took out, whose rounds may be empty)."""
        turns = self._round()
        return self.receiving < self.slots and bool(turns) and next(iter(turns.values()))[0] is ticket

    def take(self) -> None:
        """The next ticket takes a slot; its peer goes to the end of its round."""
        turns = self._round()
        peer, tickets = next(iter(turns.items()))
        tickets.popleft()
        if tickets:
            turns.move_to_end(peer)
        else:
            del turns[peer]
        self.waiting -= 1
        self.receiving += 1

    def leave(self, peer: str, ticket: object) -> None:
        """``ticket``'s call ended while it waited (nothing when ``drop_ended`` took it out already)."""
        turns = self.ahead if ticket in self.ahead.get(peer, ()) else self.line
        tickets = turns.get(peer)
        if tickets is None or ticket not in tickets:
            return
        tickets.remove(ticket)
        if not tickets:
            del turns[peer]
        self.waiting -= 1

    def drop_ended(self, ahead: bool) -> None:
        """Take out of the ``ahead`` round (or the other) the tickets whose calls have ended (each ticket is its call's
        context), before their handlers wake to leave: a burst of calls that expired or were cancelled while waiting
        would otherwise count against the waiting bound and refuse live calls."""
        turns = self.ahead if ahead else self.line
        for peer, tickets in list(turns.items()):
            live = collections.deque(t for t in tickets if t.is_active())  # type: ignore[attr-defined]
            self.waiting -= len(tickets) - len(live)
            if live:
                turns[peer] = live
            else:
                del turns[peer]


@dataclass
class Received:
    """One message of a request stream as the intake took it in: its ``size`` counts as held until
    ``release()`` (called once it is answered), unless it was ``refused`` (not held, answered with that status)."""

    message: Any
    size: int
    refused: Failure | None
    intake: Intake

    def release(self) -> None:
        """The message was answered (or its answer now counts instead); a second call does nothing."""
        if self.refused is None and self.size:
            self.intake.release(self.size)
            self.size = 0


class Intake:
    """Three lanes: the large one (``receiving_limit`` // ``largest`` slots, at least one), the small one (one
    slot) and the stream one (``stream_limit`` // ``largest`` slots, at least one, for GradStream messages);
    the bytes received and not yet answered (up to ``held_limit``); and at most ``max_waiting`` unary calls
    waiting for their turn in the large lane. A limit of 0 is none."""

    def __init__(self, receiving_limit: int, largest: int, held_limit: int, stream_limit: int = 0, max_waiting: int = 0,
                 deadline: Callable[[grpc.ServicerContext], float | None] | None = None) -> None:
        self.deadline = deadline
        """A call's deadline (``time.monotonic``; None: none), as the servicer sets it: a unary call's message must have
        arrived by then (None here: no bound)."""
        self.largest = largest
        self.held_limit = held_limit
        self.max_waiting = max_waiting
        self.bounded = bool(receiving_limit)
        self.large = Lane(max(1, receiving_limit // largest) if receiving_limit and largest else 1)
        self.small = Lane(1, receive_seconds=SMALL_RECEIVE_SECONDS)
        self.health = Lane(1, receive_seconds=HEALTH_RECEIVE_SECONDS)
        self.streams = Lane(max(1, stream_limit // largest) if stream_limit and largest else 1)
        self.others = Lane(1)
        """Other services' request streams (gRPC reflection's): an open one waiting for its client's next question holds
        its turn, which stalls only other such streams."""
        self.small_peers: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Connections whose last message in the large lane was at most ``SMALL_BYTES`` (the latest ``PEERS_KEPT``)."""
        self.held = 0
        """Bytes of the messages received whose handlers have not returned."""
        self.freed = 0
        """Running total of the bytes of messages over ``SMALL_BYTES`` whose handlers returned."""
        self._lock = threading.Lock()
        """Guards all of the above; taken directly (a Condition's own ``with`` costs Python calls, five times a request)."""
        self._room = threading.Condition(self._lock)
        self._overdue_calls: set[Any] = set()
        """Calls cancelled by ``_overdue`` whose handlers have not yet seen their message missing (``receive``)."""

    def _wait_turn(self, lane: Lane, context: grpc.ServicerContext, max_waiting: int = 0, due: float | None = None) -> bool:
        """Wait for this handler's turn in ``lane`` and take a slot; False when the call ended first. Raises
        Failure (RESOURCE_EXHAUSTED) at once when it would wait behind ``max_waiting`` others of its round
        (0: no bound): each round has its own bound, so that uploads filling the line never refuse small calls.
        With none waiting in ``lane`` and a slot free, the slot is taken at once (no other handler's turn changes).
        ``due``: when a unary call's message must have arrived; while it waits, a handler cancels the calls receiving in
        ``lane`` past theirs (``_overdue``)."""
        with self._lock:
            if not lane.waiting and lane.receiving < lane.slots:
                lane.receiving += 1
                lane.expect(context, due)
                return True
            ticket, peer = context, context.peer()
            ahead = lane is self.large and peer in self.small_peers
            waiting = lane.in_round(ahead)
            if max_waiting and waiting >= max_waiting:
                lane.drop_ended(ahead)
                waiting = lane.in_round(ahead)
                self._room.notify_all()  # another ticket may be first now
            if max_waiting and waiting >= max_waiting:
                raise Failure("RESOURCE_EXHAUSTED", f"{waiting} calls are already waiting for their turn to be "
                              f"received, the max_receive_waiting limit of {max_waiting}; retry later")
            lane.join(peer, ticket, ahead)
            while not self._room.wait_for(lambda: lane.turn(ticket), WAIT_SLICE_SECONDS):
                if not context.is_active():
                    lane.leave(peer, ticket)
                    self._room.notify_all()
                    return False
                if lane.inbound:
                    self._overdue(lane)
            lane.take()
            lane.expect(context, due)
            self._room.notify_all()
        return True

    def _overdue(self, lane: Lane) -> None:
        """Cancel the calls receiving in ``lane`` whose message has not arrived by their deadline (the caller holds the
        lock): a caller that never sends its message would otherwise hold the lane's slot for as long as its connection lives."""
        now = time.monotonic()
        for context, due in list(lane.inbound.items()):
            if due <= now:
                del lane.inbound[context]
                self._overdue_calls.add(context)
                log("receive_overdue", level="warning", peer=context.peer(),
                    message="the request message did not arrive by the call's deadline or its lane's receive bound; the call was cancelled")
                context.cancel()

    def _done_receiving(self, lane: Lane, context: grpc.ServicerContext) -> None:
        with self._lock:
            lane.receiving -= 1
            if lane.inbound:
                lane.inbound.pop(context, None)
            if lane.waiting:  # only handlers waiting in this lane wait for its slots
                self._room.notify_all()

    def _next_in_turn(self, lane: Lane, messages: Iterator[Any], context: grpc.ServicerContext,
                      max_waiting: int = 0, unary: bool = False) -> tuple[Any, int] | None:
        """The next (message, size) of ``messages``, asked of gRPC in this handler's turn in ``lane``; None when
        the stream ended, the call ended first or was cancelled while the message was on its way (``unary``: the one
        message of a unary call, which must arrive by the call's deadline while others wait in ``lane``)."""
        if self.bounded:
            due = self.deadline(context) if unary and self.deadline is not None else None
            if not self._wait_turn(lane, context, max_waiting, due):
                return None
        try:
            return next(messages, None)
        except grpc.RpcError:
            return None
        finally:
            if self.bounded:
                self._done_receiving(lane, context)

    def receive(self, method: str, messages: Iterator[Any], context: grpc.ServicerContext) -> tuple[Any, int] | None:
        """The one (message, size) of a unary call's ``messages`` (the deserializer's pairs), asked for in
        its lane's turn; None when the call ended first or carried no message. The size stays counted as
        held until ``release``; raises Failure when it does not fit or exceeds what the call declared."""
        declared = _declared(context)
        if method in HEALTH_METHODS:
            lane = self.health
        else:
            lane = self.small if method not in LARGE_METHODS or (declared is not None and declared <= SMALL_BYTES) else self.large
        pair = self._next_in_turn(lane, messages, context, self.max_waiting if lane is self.large else 0, unary=True)
        if self._overdue_calls:
            with self._lock:
                overdue = context in self._overdue_calls
                self._overdue_calls.discard(context)
            if overdue and pair is None:  # cancelled (its caller sees CANCELLED): logged and counted as what it was
                raise Failure("DEADLINE_EXCEEDED", f"{method}: the request message did not arrive by the call's "
                              "deadline or its lane's receive bound (SMALL_RECEIVE_SECONDS, HEALTH_RECEIVE_SECONDS after its "
                              "turn); the call was cancelled")
        if pair is None:
            return None
        message, size = pair
        if lane is self.large:
            self._remember(context.peer(), size)
        if declared is not None and size > declared:
            raise Failure("INVALID_ARGUMENT", f"{method}: the request is {size} bytes, more than the {declared} its "
                          f"{DECLARED} metadata declares", [(DECLARED, "smaller than the request")])
        self.hold(size)
        return message, size

    def _remember(self, peer: str, size: int) -> None:
        """Note whether ``peer``'s latest message in the large lane was small (its next call goes ahead)."""
        with self._lock:
            if size <= SMALL_BYTES:
                self.small_peers[peer] = None
                self.small_peers.move_to_end(peer)
                if len(self.small_peers) > PEERS_KEPT:
                    self.small_peers.popitem(last=False)
            else:
                self.small_peers.pop(peer, None)

    def stream(self, messages: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Received]:
        """The messages of a request stream (the deserializer's (message, size) pairs), each asked of gRPC in
        its turn in the stream lane and then held (``hold``); a message that does not fit is yielded
        ``refused``, and the stream goes on. Ends with the stream, or when the call ended first."""
        while (pair := self._next_in_turn(self.streams, messages, context)) is not None:
            message, size = pair
            try:
                self.hold(size)
            except Failure as f:
                yield Received(message, size, f, self)
                continue
            yield Received(message, size, None, self)

    def each(self, messages: Iterator[Any], context: grpc.ServicerContext) -> Iterator[tuple[Any, int]]:
        """The (message, size) pairs of any other request stream (gRPC reflection's), each asked of gRPC in
        its turn in their own lane (``others``) and held (``hold``, which raises Failure when it does not fit) until
        the next one is asked for or the stream ends, so that such streams stay within the same budgets. (A stream
        open while its client thinks holds its turn: in the small lane that stalled every health check, in the stream
        lane every GradStream.)"""
        size = 0
        try:
            while (pair := self._next_in_turn(self.others, messages, context)) is not None:
                self.release(size)
                size = 0
                self.hold(pair[1])
                size = pair[1]
                yield pair
        finally:
            self.release(size)

    def hold(self, size: int, what: str = "this request", advice: str = "retry later, or send smaller requests") -> None:
        """Count ``size`` bytes (received, or of a stream's answer waiting to be sent) as held, or refuse them
        (RESOURCE_EXHAUSTED, naming ``what`` they are and giving ``advice``) when they do not fit."""
        with self._lock:
            held = self.held
            if size <= SMALL_BYTES or not self.held_limit or held + size <= self.held_limit:
                self.held = held + size
                return
        raise Failure("RESOURCE_EXHAUSTED", f"{what} is {size} bytes and the requests waiting or being computed "
                      f"hold {held}, together over the max_queued_bytes limit of {self.held_limit}; {advice}")

    def release(self, size: int) -> None:
        """A handler holding ``size`` bytes returned."""
        with self._lock:
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
