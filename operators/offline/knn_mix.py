"""A session-kNN mix for a trained checkpoint: the kNN tuned on validation, then its weight beside the GCN.

Served score of an item (:class:`operators.session_knn.KNNMix`)::

    user · item + w · knn(item) / max over items of knn

1. The kNN method's hyper-parameters: :func:`operators.offline.knn.tune` on the validation
   cases by MRR@20, exactly as ``ripple evaluate --baselines stan`` chooses them.
2. The weight: each candidate ``w`` on (at most ``weight_cases``) validation cases through the
   serving path as ``ripple evaluate`` runs it (the case's graph, its embedding, the kNN query of
   that same graph at the case's time), by Recall@20 + MRR@20, ties to the smaller ``w``. ``w = 0``, the GCN alone, is
   a candidate: when it wins, no mix is made.

The index holds the split's training histories only, so the validation cases stay unseen;
test cases are never looked at (``ripple evaluate`` scores the mixed checkpoint on them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from graph_state import GraphConfig
from operators.checkpoint import Checkpoint
from operators.item_index import ItemIndex
from operators.offline.datasets import Case, Split, case_graph, case_times, target_row
from operators.offline.evaluation import GraphScorer, rank_metrics, rank_of_targets
from operators.offline.knn import E_NO_VALID, Tuned, tune
from operators.recommend import exclude_items
from operators.session_knn import KNNMix, SessionIndex

DEFAULT_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
"""The GCN's scores are cosines times ``norm_scale`` (16 by default), so from about 64 on the kNN decides."""
CHOICE = ("recall@20", "mrr@20")
"""The weight maximises the sum of these validation metrics."""
E_VOCAB = (
    "the checkpoint's vocabulary ({model:,} items) is not this split's ({split:,} items); pass the --data, --format, "
    "--val-share and --seed the model was trained with."
)
E_WEIGHTS = "weights must be numbers >= 0 (got {weights}); 0 stands for the GCN alone."


@dataclass
class MixFit:
    """The checkpoint with its mix (or unchanged when ``weight`` is 0) and how it was chosen."""

    checkpoint: Checkpoint
    tuned: Tuned
    weight: float
    valid: dict[float, dict[str, float]]
    """Validation metrics per candidate weight."""
    cases: int
    seconds: float


def metrics_per_weight(
    both: Callable[[Sequence[Case]], tuple[torch.Tensor, torch.Tensor]],
    index: ItemIndex,
    cases: Sequence[Case],
    weights: Sequence[float],
    batch_size: int = 512,
) -> dict[float, dict[str, float]]:
    """Full-ranking metrics (K = 10, 20) of ``base + w · extra`` for every ``w``; ``both(chunk)`` gives the
    ``[B, n_items]`` base and extra scores of a chunk of cases, so each chunk is scored once for all weights."""
    ranks: dict[float, list[torch.Tensor]] = {w: [] for w in weights}
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        with torch.inference_mode():
            base, extra = both(chunk)
            targets = torch.tensor([target_row(index, c.target) for c in chunk], dtype=torch.long)
            for w in weights:
                ranks[w].append(rank_of_targets(base + w * extra if w else base, targets))
    return {w: rank_metrics(torch.cat(r), (10, 20)) for w, r in ranks.items()}


def fit_mix(
    checkpoint: Checkpoint,
    split: Split,
    kind: str = "stan",
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    knn_cases: int = 5_000,
    weight_cases: int = 20_000,
    seed: int = 0,
    batch_size: int = 512,
    exclude_seen: bool = False,
    graph_config: GraphConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> MixFit:
    """Tune ``kind`` and its weight on ``split``'s validation cases; see the module docstring."""
    started = time.perf_counter()
    if list(checkpoint.index.vocab) != list(split.vocab):
        raise ValueError(E_VOCAB.format(model=len(checkpoint.index.vocab), split=len(split.vocab)))
    if not split.valid:
        raise ValueError(E_NO_VALID.format(kind=kind))
    if not weights or any(not (w >= 0 and np.isfinite(w)) for w in weights):
        raise ValueError(E_WEIGHTS.format(weights=list(weights)))
    weights = sorted(set(float(w) for w in weights) | {0.0})
    plain = dataclasses.replace(checkpoint, knn_mix=None)
    sessions = SessionIndex.from_split(split, plain.index)
    knn, tuned = tune(kind, split, knn_cases, seed, batch_size, exclude_seen, sessions=sessions, log=log)
    probe = KNNMix(knn.knn, 1.0)
    cases = split.valid
    if len(cases) > weight_cases:
        pick = np.sort(np.random.default_rng(seed).choice(len(cases), weight_cases, replace=False))
        cases = [split.valid[i] for i in pick]
    scorer = GraphScorer(plain, graph_config)

    def both(chunk: Sequence[Case]) -> tuple[torch.Tensor, torch.Tensor]:
        graphs = [case_graph(c, scorer.graph_config) for c in chunk]
        gcn = scorer.ranker.scores(scorer.embedder.embed_many(graphs))
        if exclude_seen:
            gcn = exclude_items(gcn, plain.index, [[ev.item_id for ev in c.history] for c in chunk])
        return gcn, probe.extra(graphs, case_times(chunk))

    valid = metrics_per_weight(both, plain.index, cases, weights, batch_size)
    chosen = max(weights, key=lambda w: (sum(valid[w][m] for m in CHOICE), -w))
    if log is not None:
        for w, m in valid.items():
            log(f"  weight {w:g}: valid Recall@20 {m['recall@20']:.4f} MRR@20 {m['mrr@20']:.4f}")
    seconds = time.perf_counter() - started
    mixed = checkpoint if chosen == 0 else _with_mix(plain, KNNMix(knn.knn, chosen), tuned, valid, len(cases), seconds)
    return MixFit(mixed, tuned, chosen, valid, len(cases), seconds)


def _with_mix(
    plain: Checkpoint, mix: KNNMix, tuned: Tuned, valid: dict[float, dict[str, float]], cases: int, seconds: float
) -> Checkpoint:
    record = {
        "kind": mix.knn.config.kind,
        "params": mix.knn.config.params(),
        "weight": mix.weight,
        "knn_valid": {name: round(v, 6) for name, v in tuned.metrics.items()},
        "knn_valid_cases": tuned.cases,
        "valid_per_weight": {f"{w:g}": {n: round(v, 6) for n, v in m.items()} for w, m in valid.items()},
        "valid_cases": cases,
        "sessions": mix.knn.sessions.n_sessions,
        "seconds": round(seconds, 1),
    }
    return dataclasses.replace(plain, knn_mix=mix, training={**plain.training, "knn_mix": record})
