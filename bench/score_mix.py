"""Experiment for issue 17: the GCN's score plus a weighted second score, the weight chosen on validation.

score(c) = user · item_c + w · other(c)

``other`` (``--with``) is either ``transitions``: P(c follows the case's last item in training),
the item-transition baseline's counts normalised per last item; or ``stan``: the STAN
session-kNN score (hyper-parameters tuned on the checkpoint's validation split, as
``ripple evaluate --baselines stan`` does), divided by each case's best score. The weight is
chosen on validation cases only (the best Recall@20 + MRR@20 over ``--weights``); the test
cases are scored once, and each chunk of cases is scored once for every weight. This measures
whether a learned mix of the GCN score with a co-occurrence score (one of the two designs the
issue names) reaches the targets before any serving code is written for it; nothing here
changes the worker.

    python bench/score_mix.py --data ../shared/data/diginetica --with stan \\
        --model runs/digi-global/seed0.ckpt --split-seed 0 --model runs/digi-global/seed1.ckpt --split-seed 1
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from bench.report import markdown, record, show
from operators import set_threads
from operators.checkpoint import Checkpoint
from operators.offline.baselines import ItemTransitions
from operators.offline.datasets import Case, Split, sessions_split
from operators.offline.evaluation import GraphScorer, Scorer
from operators.offline.knn import tune
from operators.offline.knn_mix import metrics_per_weight

BATCH = 512


class Transitions(Scorer):
    """P(item | the case's last item) from the training sessions (rows sum to 1; 0 for unseen last items)."""

    def __init__(self, split: Split) -> None:
        self.inner = ItemTransitions(split)
        self.index = self.inner.index
        self.name = "transitions"

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        counts = self.inner.scores(cases) - self.inner.prior  # the counts alone
        return counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)


class BestScaled(Scorer):
    """Another scorer's scores divided by each case's best score (so every case's top item scores 1)."""

    def __init__(self, inner: Scorer, name: str) -> None:
        self.inner, self.index, self.name = inner, inner.index, name

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        s = self.inner.scores(cases).to(torch.float32)
        return s / s.max(dim=1, keepdim=True).values.clamp(min=1e-12)


def mix_metrics(
    graph: GraphScorer, other: Scorer, cases: Sequence[Case], weights: Sequence[float]
) -> dict[float, dict[str, float]]:
    """Full-ranking metrics of ``graph + w * other`` for every ``w``, each case scored once by each model."""
    positions = [graph.index.row(item) for item in other.index.vocab]
    if positions != list(range(len(positions))) or len(positions) != len(graph.index.vocab):
        raise SystemExit("the checkpoint's vocabulary is not this split's (other data, val share or seed)")

    def both(chunk: Sequence[Case]) -> tuple[torch.Tensor, torch.Tensor]:
        return graph.scores(chunk).to(torch.float32), other.scores(chunk).to(torch.float32)

    return metrics_per_weight(both, graph.index, cases, weights, BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--split-seed", type=int, action="append", help="per --model: its training --seed")
    parser.add_argument("--with", dest="other", choices=["transitions", "stan"], default="transitions")
    parser.add_argument("--val-share", type=float, default=0.05)
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--tune-cases", type=int, default=20000, help="validation cases that choose the weight")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    seeds = args.split_seed or [0] * len(args.model)
    if len(seeds) != len(args.model):
        raise SystemExit("--split-seed: one per --model (the --seed each checkpoint was trained with)")
    rows = []
    started = time.perf_counter()
    for path, seed in zip(args.model, seeds, strict=True):
        # The checkpoint's own split: its validation sessions were never trained on.
        split = sessions_split(args.data, args.val_share, seed=seed)
        tune_cases = random.Random(0).sample(split.valid, min(args.tune_cases, len(split.valid)))
        if args.other == "stan":
            knn, tuned = tune("stan", split, seed=seed)  # its own hyper-parameters, on validation only
            other: Scorer = BestScaled(knn, f"STAN ({tuned.config.label(split.time_unit or 's')})")
        else:
            other = Transitions(split)
        graph = GraphScorer(Checkpoint.load(path))
        valid = mix_metrics(graph, other, tune_cases, args.weights)
        for w, m in valid.items():
            print(
                f"{os.path.basename(path)} weight {w:g}: validation R@20 {m['recall@20']:.4f} MRR@20 {m['mrr@20']:.4f}"
            )
        chosen = max(args.weights, key=lambda w: (valid[w]["recall@20"] + valid[w]["mrr@20"], -w))
        test = mix_metrics(graph, other, split.test, list(dict.fromkeys([0.0, chosen])))
        for w, m in test.items():
            rows.append(
                [
                    os.path.basename(path),
                    other.name,
                    f"{w:g}",
                    f"{100 * m['recall@20']:.2f}",
                    f"{100 * m['mrr@20']:.2f}",
                ]
            )
            print(rows[-1], flush=True)
    header = ["checkpoint", "mixed with", "weight", "Recall@20", "MRR@20"]
    name = os.path.basename(args.data.rstrip("/"))
    title = f"GCN score + {args.other} score ({name}, weight chosen on validation)"
    show(title, header, rows)
    if not args.no_record:
        note = (
            f"Weights tried: {', '.join(f'{w:g}' for w in args.weights)}; chosen on {args.tune_cases:,} validation "
            "cases of each checkpoint's own split by Recall@20 + MRR@20; weight 0 is the GCN alone. Test cases "
            f"scored once per checkpoint and weight. {(time.perf_counter() - started) / 60:.1f} min."
        )
        record(f"score-mix-{args.other}", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
