"""What one request may contain: the decode limits, which the server fills from its configuration."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one request may contain; the server fills these from its configuration."""

    max_tensor_elements: int = 1 << 26
    """Elements in any tensor sent, declared or computed (for empty tensors: product of the non-zero dims)."""
    max_tensor_rank: int = 32
    """Dimensions of any tensor or declared input."""
    max_graph_nodes: int = 50_000
    """Nodes of one network on the wire, and of any of its graphs once GradOperation nodes are expanded."""
    max_nesting_depth: int = 32
    """Depth of output/result trees and of chains of GradOperation-over-function references."""


DEFAULT_LIMITS = Limits()
