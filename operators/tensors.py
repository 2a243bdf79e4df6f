"""User graphs → one batched set of PyG-style tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from graph_state import Gathered, UserGraph, gather
from graph_state.user_graph import COUNTS, LAST_ACTION, LAST_SEQ
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


def recency_moved(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Where :func:`recency_buckets` of ``after`` differs from that of ``before``, for ``0 <= before <= after``
    (the same nodes some events later): only where ``after`` has a higher top bit, below the last bucket.

    >>> ago = np.arange(0, 70000)
    >>> bool((recency_moved(ago, ago + 3) == (recency_buckets(ago) != recency_buckets(ago + 3))).all())
    True
    """
    return ((before ^ after) > before) & (before < 1 << (RECENCY_BUCKETS - 2))


def graphs_to_batch(graphs: Sequence[UserGraph], index: ItemIndex) -> GraphBatch:
    """Concatenate graphs' node and edge blocks, offsetting node ids (:func:`graph_state.gather`)."""
    return columns_to_batch(gather_columns(graphs, index))


def gather_columns(graphs: Sequence[UserGraph], index: ItemIndex) -> Gathered:
    """:func:`graph_state.gather` of ``graphs`` with ``index``'s item rows (its resolved rows read,
    and new items hashed, without a call per item)."""
    listed = graphs if isinstance(graphs, list) else list(graphs)
    return gather(listed, index, index.row, index.resolved, index.hashed_rows)


def columns_to_batch(g: Gathered) -> GraphBatch:
    """The batch tensors of gathered columns (what :func:`graphs_to_batch` builds; the forward
    process gets the columns, not the graphs)."""
    count = len(g.sizes)
    if count and (g.sizes.min() == 0 or g.last.min() < 0):
        bad = int(np.flatnonzero((g.sizes == 0) | (g.last < 0))[0])
        raise ValueError(E_EMPTY_GRAPH.format(index=bad))
    ptr = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(g.sizes, out=ptr[1:])
    nodes = g.nodes
    return GraphBatch(
        item_rows=torch.from_numpy(g.rows),
        actions=torch.from_numpy(nodes[LAST_ACTION]),
        log_counts=torch.from_numpy(np.log1p(nodes[COUNTS].astype(np.float32))),
        recency=torch.from_numpy(recency_buckets(np.repeat(g.versions, g.sizes) - nodes[LAST_SEQ])),
        edge_index=torch.from_numpy(g.edges[:2]),
        edge_weight=torch.from_numpy(g.edges[2].view(np.float64).astype(np.float32)),
        batch=torch.from_numpy(np.repeat(np.arange(count, dtype=np.int64), g.sizes)),
        last_node=torch.from_numpy(g.last + ptr[:-1]),
        ptr=torch.from_numpy(ptr),
    )
