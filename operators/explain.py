"""Which behaviours made a user's vector: an exact, additive attribution over graph nodes.

The readout is linear after attention: ``user = W_last h_last + W_sum (sum_i alpha_i h_i)``
(before the optional cosine scaling, which keeps the direction). So node ``i``
contributes ``c_i = W_sum (alpha_i h_i)`` (+ ``W_last h_last`` for the latest
behaviour), and the contributions add up to the user vector exactly. A node's
``share`` is its contribution projected on the user vector, ``c_i . u / |u|^2``: the
shares sum to 1, a large share pulls the vector its way, a negative one pushes
against it. ``h_i`` already mixes in the node's neighbours (message passing), so a
share credits a behaviour together with the transitions around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graph_state import UserGraph
from operators.checkpoint import Checkpoint
from operators.tensors import graphs_to_batch


@dataclass(frozen=True)
class Attribution:
    """One behaviour (graph node) and its part in the user vector."""

    item_id: str
    action: str
    share: float
    """Projection of this node's contribution on the user vector; all shares sum to 1."""
    attention: float
    """The readout attention weight ``alpha_i``."""
    events_ago: int
    count: int


def explain(checkpoint: Checkpoint, graph: UserGraph, top: int | None = None) -> list[Attribution]:
    """Attributions of every node, largest share first (``top`` keeps the first ones).

    >>> from graph_state import GraphConfig
    >>> from types import SimpleNamespace as Ev
    >>> g = UserGraph(GraphConfig())
    >>> for n, item in enumerate("abca"):
    ...     _ = g.apply(Ev(event_id=str(n), item_id=item, action="view", ts=float(n), weight=None))
    >>> parts = explain(Checkpoint.seeded(), g)
    >>> round(sum(p.share for p in parts), 4), sorted(p.item_id for p in parts)
    (1.0, ['a', 'b', 'c'])
    """
    contributions, alpha, user = node_contributions(checkpoint, graph)
    shares = contributions @ user / user.dot(user).clamp_min(1e-30)
    actions = checkpoint.config.actions
    recency = graph.recency()
    parts = [
        Attribution(
            item_id=graph.item_ids[i],
            action=actions[int(graph.last_action[i])],
            share=float(shares[i]),
            attention=float(alpha[i]),
            events_ago=recency[i],
            count=int(graph.counts[i]),
        )
        for i in range(graph.n_nodes)
    ]
    parts.sort(key=lambda p: p.share, reverse=True)
    return parts if top is None else parts[:top]


def node_contributions(checkpoint: Checkpoint, graph: UserGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``c`` [N, d], ``alpha`` [N], unscaled user vector [d]) with ``c.sum(0) == user``."""
    enc = checkpoint.encoder
    b = graphs_to_batch([graph], checkpoint.index)
    with torch.inference_mode():
        h = enc.node_states(b)
        _, alpha = enc.readout(h, b)
        d = h.shape[1]
        w_last, w_sum = enc.out.weight[:, :d], enc.out.weight[:, d:]
        contributions = (alpha.unsqueeze(-1) * h) @ w_sum.T
        last = int(b.last_node[0])
        contributions[last] += h[last] @ w_last.T
        if enc.out.bias is not None:
            contributions += enc.out.bias / graph.n_nodes
        return contributions, alpha, contributions.sum(0)
