"""The op catalog: importing this package registers every primitive in the op table."""
from . import debug, elementwise, indexing, linalg, nn, reduce, shape  # noqa: F401
