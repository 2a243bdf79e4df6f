"""Out-of-fold global views for training: each fold's prefixes read the view built from the other folds.

Every transition of a training history is the target of one of its prefixes, so a view built
from all training histories holds each training target among the last item's neighbours: the
model learns to trust the view more than it deserves on histories it has never seen (what it
serves). Training therefore splits the histories into folds and gives each fold's prefixes the
view built from the other folds; validation and serving use the view of all of them
(:mod:`operators.global_view`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from operators.global_view import GlobalView, build_global_view
from operators.offline.datasets import PackedGraphs
from operators.session_knn import segment_ranges
from operators.tensors import GraphBatch

if TYPE_CHECKING:
    from operators.encoder import GraphEncoder


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
