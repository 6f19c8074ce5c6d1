"""The op catalog: importing this package registers every primitive in the op table."""
from . import custom, elementwise, indexing, linalg, nn, reduce, shape  # noqa: F401
