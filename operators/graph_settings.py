"""The graph settings a checkpoint was trained with: recorded by training, checked before serving.

A trained checkpoint keeps the window, actions, action weights and decay of the user
graphs it learned from in ``Checkpoint.training["graph"]``; the runners refuse to serve
it on graphs built otherwise (``stream_app/core/serving.py``).

>>> from graph_state import GraphConfig
>>> from operators import Checkpoint, EncoderConfig
>>> checkpoint = Checkpoint.seeded(EncoderConfig(), seed=0)
>>> graph_config_of(checkpoint).max_nodes == GraphConfig().max_nodes  # seeded: the defaults
True
>>> checkpoint.training["graph"] = graph_config_dict(GraphConfig(max_nodes=20))
>>> graph_config_of(checkpoint).max_nodes
20
"""

from __future__ import annotations

from graph_state import GraphConfig
from operators.checkpoint import Checkpoint


def graph_config_of(checkpoint: Checkpoint) -> GraphConfig:
    """The graph settings a checkpoint was trained with (defaults for a seeded model)."""
    saved = checkpoint.training.get("graph")
    if not saved:
        return GraphConfig(actions=checkpoint.config.actions)
    return GraphConfig(
        max_nodes=int(saved["max_nodes"]),
        actions=tuple(saved["actions"]),
        action_weights={str(k): float(v) for k, v in saved["action_weights"].items()},
        decay_seconds=float(saved["decay_seconds"]),
        dedupe_ring=int(saved.get("dedupe_ring", 256)),
    )


def graph_config_dict(config: GraphConfig) -> dict:
    return {
        "max_nodes": config.max_nodes,
        "actions": list(config.actions),
        "action_weights": dict(config.action_weights),
        "decay_seconds": config.decay_seconds,
        "dedupe_ring": config.dedupe_ring,
    }
