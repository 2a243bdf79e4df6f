"""Baselines for the evaluation table: most-popular, last-item transitions, and a GRU4Rec-style encoder.

All of them score the same cases against the same vocabulary as the graph encoder,
through :func:`operators.offline.evaluation.evaluate`. The GRU is trained by the same
:class:`operators.offline.training.Trainer` (full softmax, early stopping on MRR@20).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from operators.item_index import ItemIndex
from operators.offline.datasets import Case, Split, pack_case_sequences, pack_prefix_sequences, segment_ranges
from operators.offline.evaluation import Scorer
from operators.offline.training import TrainConfig, Trainer, TrainResult

TIE_BREAK = 1e-6
"""Transition scores add this times the normalised popularity, so unseen pairs rank by popularity."""


def item_counts(split: Split, index: ItemIndex) -> torch.Tensor:
    counts = Counter(ev.item_id for seq in split.train for ev in seq)
    out = torch.zeros(len(index.vocab), dtype=torch.float32)
    for item, n in counts.items():
        if index.is_known(item):
            out[index.row(item)] = n
    return out


class MostPopular(Scorer):
    """Every case gets the same ranking: items by their number of training events.

    >>> from operators.offline.datasets import Interaction, leave_one_out
    >>> split = leave_one_out({"u": [Interaction(str(i), x, ts=i) for i, x in enumerate("abba_")]})
    >>> MostPopular(split).scores([Case("u", [], "a")]).tolist()
    [[1.0, 2.0]]
    """

    name = "most-popular"

    def __init__(self, split: Split) -> None:
        self.index = ItemIndex(split.vocab, 1)
        self.counts = item_counts(split, self.index)

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(cases), -1)


class ItemTransitions(Scorer):
    """Item-to-item co-occurrence: how often each item directly followed the case's last item in training."""

    name = "item-transitions"

    def __init__(self, split: Split) -> None:
        self.index = ItemIndex(split.vocab, 1)
        n = len(split.vocab)
        pairs: Counter[tuple[int, int]] = Counter()
        for seq in split.train:
            rows = [self.index.row(ev.item_id) for ev in seq]
            pairs.update(itertools.pairwise(rows))
        # CSR rows of the transition counts: successors of item r are indices[indptr[r]:indptr[r + 1]].
        order = sorted(pairs)
        src = np.asarray([a for a, _ in order], dtype=np.int64)
        self.indices = np.asarray([b for _, b in order], dtype=np.int64)
        self.values = torch.tensor([pairs[p] for p in order], dtype=torch.float32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))]).astype(np.int64)
        pop = item_counts(split, self.index)
        self.prior = TIE_BREAK * pop / max(1.0, float(pop.max()))

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        n = len(self.index.vocab)
        last = np.asarray([self.index.row(c.history[-1].item_id) if c.history else n for c in cases], dtype=np.int64)
        known = last < n
        starts = np.where(known, self.indptr[np.minimum(last, n - 1)], 0)
        lengths = np.where(known, self.indptr[np.minimum(last, n - 1) + 1] - starts, 0)
        at = segment_ranges(starts, lengths)
        out = self.prior.unsqueeze(0).repeat(len(cases), 1)
        rows = torch.from_numpy(np.repeat(np.arange(len(cases)), lengths))
        out[rows, torch.from_numpy(self.indices[at])] += self.values[torch.from_numpy(at)]
        return out


class GRU4Rec(nn.Module):
    """Item embeddings → one GRU over the last ``max_len`` items → the final hidden state as the user vector.

    Scores are dot products with the (tied) item embeddings; ``norm_scale`` > 0
    normalises both sides as the graph encoder does, so the comparison is like for like.
    """

    def __init__(self, n_item_rows: int, dim: int, norm_scale: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_item_rows, dim)
        nn.init.normal_(self.item_emb.weight, std=dim**-0.5)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.norm_scale = norm_scale

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        rows, lengths = batch
        x = self.item_emb(rows)
        if self.norm_scale > 0:
            x = F.normalize(x, dim=-1)
        states, _ = self.gru(self.dropout(x))
        last = states[torch.arange(rows.shape[0]), (lengths - 1).clamp(min=0)]
        user = self.out(last)
        if self.norm_scale > 0:
            user = self.norm_scale * F.normalize(user, dim=-1)
        return user

    def item_vectors(self) -> torch.Tensor:
        if self.norm_scale > 0:
            return F.normalize(self.item_emb.weight, dim=-1)
        return self.item_emb.weight


class GRUScorer(Scorer):
    """A trained :class:`GRU4Rec` over each case's last ``max_len`` items."""

    name = "GRU4Rec"

    def __init__(self, model: GRU4Rec, index: ItemIndex, max_len: int) -> None:
        self.model = model.eval()
        self.index = index
        self.max_len = max_len

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        packed = pack_case_sequences(cases, self.index, self.max_len)
        with torch.inference_mode():
            user = self.model(packed.batch(np.arange(len(cases))))
            return user @ self.model.item_vectors()[: len(self.index.vocab)].T


def train_gru(
    split: Split,
    dim: int,
    config: TrainConfig,
    max_len: int = 50,
    norm_scale: float = 0.0,
    dropout: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> tuple[GRUScorer, TrainResult]:
    """Train the GRU baseline on the split's training prefixes with the shared trainer."""
    index = ItemIndex(split.vocab, 1)
    started = time.perf_counter()
    train = pack_prefix_sequences(split.train, index, max_len)
    valid = pack_case_sequences(split.valid, index, max_len)
    if log is not None:
        log(f"GRU4Rec: packed {len(train):,} training sequences in {time.perf_counter() - started:.1f}s")
    torch.manual_seed(config.seed)
    model = GRU4Rec(index.n_rows, dim, norm_scale, dropout)
    result = Trainer(model, train, valid, len(split.vocab), config).fit(log)
    return GRUScorer(model, index, max_len), result
