"""The global item view: each item's strongest transition neighbours across all training histories.

A user graph only holds that user's own behaviour; what other users did next after an item
(what session-kNN and GCE-GNN's global graph exploit) is in no node. The global view is built
once per model from the training histories: two items are neighbours when one followed the other
within ``window`` steps in some history, weighted ``1 / distance`` per occurrence and summed over
all histories, in both directions; each item keeps its ``k`` heaviest neighbours, weights scaled
to sum to 1. The encoder adds a learned projection of that weighted mean of neighbour vectors to
each node's input (:meth:`operators.encoder.GraphEncoder.node_inputs`); the table travels in the
checkpoint as three buffers, so serving reads it and never rebuilds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from operators.datasets import PackedGraphs, segment_ranges
from operators.tensors import GraphBatch

if TYPE_CHECKING:
    from operators.encoder import GraphEncoder

E_GLOBAL = "global_k must be between 0 and 256 and global_window between 1 and 16 (got k={k}, window={window})."


class GlobalView(NamedTuple):
    """Neighbour rows and weights of every item embedding row, as CSR (rows without neighbours are empty)."""

    offsets: torch.Tensor  # [n_rows + 1] long
    neighbours: torch.Tensor  # [nnz] long
    weights: torch.Tensor  # [nnz] float32; each non-empty row sums to 1

    @classmethod
    def from_numpy(cls, offsets: np.ndarray, neighbours: np.ndarray, weights: np.ndarray) -> GlobalView:
        return cls(
            torch.from_numpy(np.asarray(offsets, np.int64)),
            torch.from_numpy(np.asarray(neighbours, np.int64)),
            torch.from_numpy(np.asarray(weights, np.float32)),
        )

    def neighbours_of(self, row: int) -> list[tuple[int, float]]:
        """``(neighbour row, weight)`` of one row, heaviest first."""
        lo, hi = int(self.offsets[row]), int(self.offsets[row + 1])
        return [(int(n), float(w)) for n, w in zip(self.neighbours[lo:hi], self.weights[lo:hi], strict=True)]


def build_global_view(histories: Iterable[Sequence[int]], n_rows: int, k: int, window: int = 1) -> GlobalView:
    """The top-``k`` transition neighbours of every row from histories given as item rows, in order.

    Repeats of an item next to itself are not transitions. Ties in weight go to the lower row, so
    the view is a function of the histories alone.

    >>> v = build_global_view([[0, 1, 2], [0, 1], [2, 1]], n_rows=4, k=2)
    >>> v.neighbours_of(1)
    [(0, 0.5), (2, 0.5)]
    >>> v.neighbours_of(0), v.neighbours_of(3)
    ([(1, 1.0)], [])
    """
    if not (0 <= k <= 256 and 1 <= window <= 16):
        raise ValueError(E_GLOBAL.format(k=k, window=window))
    rows: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    for i, history in enumerate(histories):
        if len(history) > 1:
            rows.append(np.asarray(history, np.int64))
            ids.append(np.full(len(history), i, np.int64))
    flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    session = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    src_parts, dst_parts, w_parts = [], [], []
    for d in range(1, window + 1):
        if len(flat) <= d:
            break
        a, b = flat[:-d], flat[d:]
        keep = (session[:-d] == session[d:]) & (a != b)
        a, b = a[keep], b[keep]
        w = np.full(len(a), 1.0 / d)
        src_parts += [a, b]
        dst_parts += [b, a]
        w_parts += [w, w]
    offsets = np.zeros(n_rows + 1, np.int64)
    if k == 0 or not src_parts:
        return GlobalView.from_numpy(offsets, np.zeros(0, np.int64), np.zeros(0, np.float32))
    src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
    pair, inverse = np.unique(src * n_rows + dst, return_inverse=True)
    weight = np.bincount(inverse, weights=np.concatenate(w_parts))
    src, dst = pair // n_rows, pair % n_rows
    order = np.lexsort((dst, -weight, src))  # by row, heaviest first, ties to the lower neighbour
    src, dst, weight = src[order], dst[order], weight[order]
    starts = np.searchsorted(src, src, side="left")
    keep = np.arange(len(src)) - starts < k
    src, dst, weight = src[keep], dst[keep], weight[keep]
    totals = np.bincount(src, weights=weight, minlength=n_rows)
    offsets[1:] = np.cumsum(np.bincount(src, minlength=n_rows))
    return GlobalView.from_numpy(offsets, dst, weight / totals[src])


# ---- out-of-fold training ---------------------------------------------------------
#
# Every transition of a training history is the target of one of its prefixes, so a view built
# from all training histories holds each training target among the last item's neighbours: the
# model learns to trust the view more than it deserves on histories it has never seen (what it
# serves). Training therefore splits the histories into folds and gives each fold's prefixes the
# view built from the other folds; validation and serving use the view of all of them.


def fold_of_histories(n: int, folds: int, seed: int) -> np.ndarray:
    """A fold in ``[0, folds)`` for each of ``n`` histories, balanced and shuffled by ``seed``."""
    return np.random.default_rng(seed + 7919).permutation(np.arange(n) % max(1, folds))


def stacked_views(
    histories: Sequence[Sequence[int]], n_rows: int, k: int, window: int, folds: np.ndarray, n_folds: int
) -> GlobalView:
    """Block 0: the view of every history; block ``f + 1``: the view without fold ``f``.

    One CSR over ``(n_folds + 1) * n_rows`` rows, so row ``r`` of block ``b`` is ``b * n_rows + r``
    (neighbours are plain item rows).
    """
    blocks = [build_global_view(histories, n_rows, k, window)]
    for f in range(n_folds):
        blocks.append(
            build_global_view([h for h, g in zip(histories, folds, strict=True) if g != f], n_rows, k, window)
        )
    offsets = [blocks[0].offsets]
    for block in blocks[1:]:
        offsets.append(block.offsets[1:] + offsets[-1][-1])
    return GlobalView(
        torch.cat(offsets), torch.cat([b.neighbours for b in blocks]), torch.cat([b.weights for b in blocks])
    )


def first_block(view: GlobalView, n_rows: int) -> GlobalView:
    """Block 0 of :func:`stacked_views`: the view that is served."""
    end = int(view.offsets[n_rows])
    return GlobalView(view.offsets[: n_rows + 1].clone(), view.neighbours[:end].clone(), view.weights[:end].clone())


def pack_by_fold(
    histories: Sequence[Any], folds: np.ndarray, n_folds: int, pack: Callable[[list[Any]], PackedGraphs]
) -> tuple[PackedGraphs, np.ndarray]:
    """``pack`` each fold's histories, concatenated fold by fold; also the fold of every packed graph."""
    parts = [pack([h for h, g in zip(histories, folds, strict=True) if g == f]) for f in range(n_folds)]
    graph_folds = np.concatenate([np.full(len(p), f, np.int64) for f, p in enumerate(parts)])
    node_shift = np.cumsum([0] + [len(p.item_rows) for p in parts])
    edge_shift = np.cumsum([0] + [len(p.src) for p in parts])
    fields: dict[str, np.ndarray] = {}
    for name in (f.name for f in dataclasses.fields(PackedGraphs)):
        arrays = [getattr(p, name) for p in parts]
        if name == "node_ptr":
            arrays = [arrays[0]] + [a[1:] + s for a, s in zip(arrays[1:], node_shift[1:-1], strict=True)]
        elif name == "edge_ptr":
            arrays = [arrays[0]] + [a[1:] + s for a, s in zip(arrays[1:], edge_shift[1:-1], strict=True)]
        fields[name] = np.concatenate(arrays)
    return PackedGraphs(**fields), graph_folds


class OutOfFoldGraphs:
    """Packed training graphs whose batches also say which view block each node reads.

    ``batch(sel)`` gives ``(GraphBatch, global rows)`` with ``global rows = (fold + 1) * n_rows + item row``.
    """

    def __init__(self, packed: Any, graph_folds: np.ndarray, n_rows: int) -> None:
        self.packed = packed
        self.targets = packed.targets
        self.node_block = np.repeat(graph_folds.astype(np.int64) + 1, np.diff(packed.node_ptr)) * n_rows

    def __len__(self) -> int:
        return len(self.packed)

    def batch(self, sel: np.ndarray) -> tuple[GraphBatch, torch.Tensor]:
        sel = np.asarray(sel, dtype=np.int64)
        ptr = self.packed.node_ptr
        nodes = segment_ranges(ptr[sel], ptr[sel + 1] - ptr[sel])  # the same nodes, in the same order, as batch()
        b = self.packed.batch(sel)
        return b, b.item_rows + torch.from_numpy(self.node_block[nodes])


class OutOfFoldModel(nn.Module):
    """The encoder as the trainer sees it: training batches read their fold's view, validation block 0."""

    def __init__(self, encoder: GraphEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs: GraphBatch | tuple[GraphBatch, torch.Tensor]) -> torch.Tensor:
        if isinstance(inputs, GraphBatch):
            return self.encoder(inputs)
        return self.encoder(inputs[0], inputs[1])

    def item_vectors(self) -> torch.Tensor:
        return self.encoder.item_vectors()
