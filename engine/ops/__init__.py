"""The op catalog: importing this package registers every primitive in the op table."""
from . import elementwise, indexing, linalg, nn, reduce, shape, transforms  # noqa: F401
