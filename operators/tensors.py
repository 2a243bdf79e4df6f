"""User graphs → one batched set of PyG-style tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graph_state import UserGraph
from operators.item_index import ItemIndex

RECENCY_BUCKETS = 16


def recency_bucket(events_ago: int) -> int:
    """Log2 buckets of "how many events ago": 0, 1, 2-3, 4-7, …

    >>> [recency_bucket(r) for r in (0, 1, 2, 3, 4, 1000, 10**9)]
    [0, 1, 2, 2, 3, 10, 15]
    """
    return min(events_ago.bit_length(), RECENCY_BUCKETS - 1)


@dataclass(frozen=True)
class GraphBatch:
    """Many user graphs as one disjoint union, the layout of a PyG ``Batch``."""

    item_rows: torch.Tensor  # [N] long
    actions: torch.Tensor  # [N] long, last action per node
    log_counts: torch.Tensor  # [N] float
    recency: torch.Tensor  # [N] long, recency bucket
    edge_index: torch.Tensor  # [2, E] long, src → dst (temporal transitions)
    edge_weight: torch.Tensor  # [E] float
    batch: torch.Tensor  # [N] long, graph of each node
    last_node: torch.Tensor  # [B] long, global index of each user's latest behaviour
    ptr: torch.Tensor  # [B + 1] long, node offsets

    @property
    def num_graphs(self) -> int:
        return int(self.last_node.shape[0])


E_EMPTY_GRAPH = "user graph {index} has no nodes; only users with at least one applied event can be embedded."


def graphs_to_batch(graphs: Sequence[UserGraph], index: ItemIndex) -> GraphBatch:
    """Concatenate graphs, offsetting node ids; one pass, no per-graph tensors."""
    rows: list[int] = []
    actions: list[int] = []
    counts: list[float] = []
    recency: list[int] = []
    src: list[int] = []
    dst: list[int] = []
    weights: list[float] = []
    batch: list[int] = []
    last: list[int] = []
    ptr = [0]
    offset = 0
    for g_idx, g in enumerate(graphs):
        n = g.n_nodes
        if n == 0 or g.last_slot < 0:
            raise ValueError(E_EMPTY_GRAPH.format(index=g_idx))
        rows.extend(index.rows(g.item_ids))
        actions.extend(g.last_action)
        counts.extend(math.log1p(c) for c in g.counts)
        version = g.state_version
        recency.extend(recency_bucket(version - s) for s in g.last_seq)
        for s, targets in enumerate(g.out_edges):
            for d, w in targets.items():
                src.append(s + offset)
                dst.append(d + offset)
                weights.append(w)
        batch.extend([g_idx] * n)
        last.append(g.last_slot + offset)
        offset += n
        ptr.append(offset)
    return GraphBatch(
        item_rows=torch.tensor(rows, dtype=torch.long),
        actions=torch.tensor(actions, dtype=torch.long),
        log_counts=torch.tensor(counts, dtype=torch.float32),
        recency=torch.tensor(recency, dtype=torch.long),
        edge_index=torch.tensor([src, dst], dtype=torch.long).view(2, -1),
        edge_weight=torch.tensor(weights, dtype=torch.float32),
        batch=torch.tensor(batch, dtype=torch.long),
        last_node=torch.tensor(last, dtype=torch.long),
        ptr=torch.tensor(ptr, dtype=torch.long),
    )
