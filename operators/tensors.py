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
    """Concatenate graphs' columns, offsetting node ids: numpy does all of it but the item rows."""
    sizes = np.fromiter((g.n_nodes for g in graphs), dtype=np.int64, count=len(graphs))
    for g_idx, g in enumerate(graphs):
        if g.n_nodes == 0 or g.last_slot < 0:
            raise ValueError(E_EMPTY_GRAPH.format(index=g_idx))
    n_edges = np.fromiter((g.n_edges for g in graphs), dtype=np.int64, count=len(graphs))
    ptr = np.zeros(len(graphs) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    edge_offset = np.repeat(ptr[:-1], n_edges)
    src = np.concatenate([g.edge_src for g in graphs]).astype(np.int64) + edge_offset
    dst = np.concatenate([g.edge_dst for g in graphs]).astype(np.int64) + edge_offset
    versions = np.fromiter((g.state_version for g in graphs), dtype=np.int64, count=len(graphs))
    ago = np.repeat(versions, sizes) - np.concatenate([g.last_seq for g in graphs])
    counts = np.concatenate([g.counts for g in graphs]).astype(np.float32)
    last = np.fromiter((g.last_slot for g in graphs), dtype=np.int64, count=len(graphs))
    rows: list[int] = []
    for g in graphs:
        rows.extend(index.rows(g.item_ids))
    return GraphBatch(
        item_rows=torch.tensor(rows, dtype=torch.long),
        actions=torch.from_numpy(np.concatenate([g.last_action for g in graphs]).astype(np.int64)),
        log_counts=torch.from_numpy(np.log1p(counts)),
        recency=torch.from_numpy(recency_buckets(ago)),
        edge_index=torch.from_numpy(np.stack([src, dst])),
        edge_weight=torch.from_numpy(np.concatenate([g.edge_weight for g in graphs]).astype(np.float32)),
        batch=torch.from_numpy(np.repeat(np.arange(len(graphs), dtype=np.int64), sizes)),
        last_node=torch.from_numpy(last + ptr[:-1]),
        ptr=torch.from_numpy(ptr),
    )
