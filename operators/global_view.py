"""The global item view: each item's strongest transition neighbours across all training histories.

A user graph only holds that user's own behaviour; what other users did next after an item
(what session-kNN and GCE-GNN's global graph exploit) is in no node. The global view is built
once per model from the training histories: two items are neighbours when one followed the other
within ``window`` steps in some history, weighted ``1 / distance`` per occurrence and summed over
all histories, in both directions; each item keeps its ``k`` heaviest neighbours, weights scaled
to sum to 1. The encoder adds a learned projection of that weighted mean of neighbour vectors to
each node's input (:meth:`operators.encoder.GraphEncoder.node_inputs`); the table travels in the
checkpoint as three buffers, so serving reads it and never rebuilds it. Training builds it out of
fold (:mod:`operators.offline.global_view_folds`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch

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
