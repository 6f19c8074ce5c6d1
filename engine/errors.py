"""The engine's one error hierarchy: every message names the node, op, shapes or dtypes at fault."""


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class GraphError(EngineError):
    """A malformed graph: unknown op, bad attribute, wrong arity, cycle, dangling or duplicate value."""


class ShapeError(GraphError):
    """Shapes that an op cannot take, found by shape inference before any array exists."""


class DTypeError(GraphError):
    """Dtypes that an op cannot take, found by inference before any array exists."""


class NotDifferentiableError(EngineError):
    """A gradient was asked through an op that has no VJP rule."""


class InputError(EngineError):
    """Run-time arguments that do not match the graph's declared inputs or parameters."""


class Interrupted(EngineError):
    """A run stopped between steps because its caller's ``interrupt()`` said so (a cancelled or expired call)."""


NAME_LIMIT = 96
"""How many characters of a caller's name a message or log line echoes: room for any sensible name and
a whole network id ("sha256:" and 64 hex digits)."""


def shown(name: object, limit: int = NAME_LIMIT) -> str:
    """``repr`` of a caller-chosen name, cut to ``limit`` characters with its full length noted, so that an
    echoed name can never make a message, a status or a log line large."""
    text = str(name)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def shown_names(names: "list[str] | tuple[str, ...]", limit: int = 8) -> str:
    """A list of caller-chosen names for a message: at most ``limit`` of them, each through :func:`shown`."""
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return "[" + ", ".join(shown(n) for n in names[:limit]) + more + "]"
