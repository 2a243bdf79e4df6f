"""Settings that shape a user's behaviour graph."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_ACTIONS: tuple[str, ...] = ("view", "click", "cart", "purchase", "rate", "other")
DEFAULT_ACTION_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.5,
    "cart": 3.0,
    "purchase": 5.0,
    "rate": 1.0,
    "other": 1.0,
}

E_MAX_NODES = "max_nodes must be between 1 and 100000 (got {value}); set RIPPLE_MAX_NODES to a sane window size."
E_ACTIONS = "the action vocabulary must contain 'other' and at most 62 actions (got {value})."
E_DECAY = "decay_seconds must be a positive number (got {value})."
E_RING = "dedupe_ring must be between 1 and 65536 (got {value})."
E_LATENESS = "max_lateness_s must be >= 0 seconds (got {value}); use inf to accept any lateness."


@dataclass(frozen=True)
class GraphConfig:
    """How events turn into a graph.

    >>> GraphConfig(max_nodes=3).action_index("purchase")
    3
    >>> GraphConfig().action_index("teleport") == GraphConfig().action_index("other")
    True
    """

    max_nodes: int = 50
    """Distinct items kept per user; the least recently seen one is evicted beyond it."""
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    """Action vocabulary; anything else counts as ``other``."""
    action_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ACTION_WEIGHTS))
    """Weight a behaviour of this action adds to the transition edge that leads to it."""
    decay_seconds: float = 3600.0
    """Time constant of the decay applied to a transition by the gap between two behaviours."""
    dedupe_ring: int = 256
    """How many recent event ids per user are remembered for idempotent replay."""
    max_lateness_s: float = math.inf
    """Late-event policy: an event whose ``ts`` is more than this many seconds before the
    user's previous applied event is refused (the pipeline dead-letters it as ``late_event``).
    Accepted events always enter the graph in arrival order; a transition into an
    out-of-order event counts as immediate (its gap is clipped at 0). The default accepts
    any lateness, so unsorted historical logs (ml-100k) replay whole."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_nodes <= 100_000:
            raise ValueError(E_MAX_NODES.format(value=self.max_nodes))
        if "other" not in self.actions or len(self.actions) > 62 or len(set(self.actions)) != len(self.actions):
            raise ValueError(E_ACTIONS.format(value=self.actions))
        if not (self.decay_seconds > 0 and math.isfinite(self.decay_seconds)):
            raise ValueError(E_DECAY.format(value=self.decay_seconds))
        if not 1 <= self.dedupe_ring <= 65536:
            raise ValueError(E_RING.format(value=self.dedupe_ring))
        if not self.max_lateness_s >= 0:
            raise ValueError(E_LATENESS.format(value=self.max_lateness_s))
        object.__setattr__(self, "_index", {a: i for i, a in enumerate(self.actions)})
        object.__setattr__(self, "_weights", [float(self.action_weights.get(a, 1.0)) for a in self.actions])

    def action_index(self, action: str) -> int:
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        return index.get(action, index["other"])

    def action_weight(self, index: int) -> float:
        weights: list[float] = self._weights  # type: ignore[attr-defined]
        return weights[index]
