"""The op catalog: importing this package registers every primitive in the op table."""
from . import arrays, conv, custom, debug, elementwise, indexing, linalg, nn, norm, pool, random, reduce, shape, transforms  # noqa: F401
