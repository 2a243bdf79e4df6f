"""User graphs → one batched set of PyG-style tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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


def recency_buckets(events_ago: np.ndarray) -> np.ndarray:
    """Vectorised :func:`recency_bucket` (``frexp`` exponent = bit length, exactly)."""
    _, exponent = np.frexp(np.maximum(events_ago, 0).astype(np.float64))
    return np.minimum(exponent, RECENCY_BUCKETS - 1).astype(np.int64)


def graphs_to_batch(graphs: Sequence[UserGraph], index: ItemIndex) -> GraphBatch:
    """Concatenate graphs, offsetting node ids; Python only gathers, numpy does the arithmetic."""
    rows: list[int] = []
    actions: list[int] = []
    counts: list[int] = []
    last_seq: list[int] = []
    src: list[int] = []
    dst: list[int] = []
    weights: list[float] = []
    sizes: list[int] = []
    n_edges: list[int] = []
    versions: list[int] = []
    last: list[int] = []
    for g_idx, g in enumerate(graphs):
        n = g.n_nodes
        if n == 0 or g.last_slot < 0:
            raise ValueError(E_EMPTY_GRAPH.format(index=g_idx))
        rows.extend(index.rows(g.item_ids))
        actions.extend(g.last_action)
        counts.extend(g.counts)
        last_seq.extend(g.last_seq)
        before = len(src)
        for s, targets in enumerate(g.out_edges):
            if targets:
                src.extend([s] * len(targets))
                dst.extend(targets.keys())
                weights.extend(targets.values())
        n_edges.append(len(src) - before)
        sizes.append(n)
        versions.append(g.state_version)
        last.append(g.last_slot)
    size_arr = np.asarray(sizes, dtype=np.int64)
    ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(size_arr, out=ptr[1:])
    edge_offset = np.repeat(ptr[:-1], n_edges)
    edge_index = np.stack([np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)]) + edge_offset
    ago = np.repeat(np.asarray(versions, dtype=np.int64), size_arr) - np.asarray(last_seq, dtype=np.int64)
    return GraphBatch(
        item_rows=torch.tensor(rows, dtype=torch.long),
        actions=torch.tensor(actions, dtype=torch.long),
        log_counts=torch.from_numpy(np.log1p(np.asarray(counts, dtype=np.float32))),
        recency=torch.from_numpy(recency_buckets(ago)),
        edge_index=torch.from_numpy(edge_index.reshape(2, -1)),
        edge_weight=torch.tensor(weights, dtype=torch.float32),
        batch=torch.from_numpy(np.repeat(np.arange(len(sizes), dtype=np.int64), size_arr)),
        last_node=torch.from_numpy(np.asarray(last, dtype=np.int64) + ptr[:-1]),
        ptr=torch.from_numpy(ptr),
    )
