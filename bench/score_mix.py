"""Experiment for issue 17: the GCN's score plus a weighted item-transition score, weight chosen on validation.

score(c) = user · item_c + w · P(c follows the case's last item in training)

P is the item-transition baseline's count normalised per last item (``ItemTransitions``). The
weight is chosen on validation cases only (the best Recall@20 + MRR@20 over ``--weights``);
the test cases are scored once, with that weight. This measures whether a learned mix of the
GCN score with a co-occurrence score (one of the two designs the issue names) reaches the
targets before any serving code is written for it; nothing here changes the worker.

    python bench/score_mix.py --data ../shared/data/diginetica --model runs/digi-global/seed0.ckpt \\
        --split-seed 0 --model runs/digi-global/seed1.ckpt --split-seed 1 --val-share 0.05
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from bench.report import markdown, record, show
from operators import set_threads
from operators.checkpoint import Checkpoint
from operators.offline.baselines import ItemTransitions
from operators.offline.datasets import Case, sessions_split
from operators.offline.evaluation import GraphScorer, Scorer, evaluate

KS = (10, 20)


class MixedScorer(Scorer):
    """The GCN's scores plus ``weight`` times the transition probability from the case's last item."""

    def __init__(self, graph: GraphScorer, transitions: ItemTransitions, weight: float, vectors: dict) -> None:
        self.graph, self.transitions, self.weight = graph, transitions, weight
        self.vectors = vectors  # user vectors per chunk of cases, shared between weights (the GCN runs once)
        self.index = graph.index
        self.name = f"GCN + {weight:g} x transitions"

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        key = (cases[0].user_id, cases[0].target, cases[-1].user_id, len(cases))
        if key not in self.vectors:
            self.vectors[key] = self.graph.user_vectors(cases)
        gcn = self.graph.ranker.scores(self.vectors[key])
        if not self.weight:
            return gcn
        counts = self.transitions.scores(cases) - self.transitions.prior  # the counts alone
        probability = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)
        return gcn + self.weight * probability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--split-seed", type=int, action="append", help="per --model: its training --seed")
    parser.add_argument("--val-share", type=float, default=0.05)
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--tune-cases", type=int, default=20000, help="validation cases scored per weight")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    seeds = args.split_seed or [0] * len(args.model)
    if len(seeds) != len(args.model):
        raise SystemExit("--split-seed: one per --model (the --seed each checkpoint was trained with)")
    rows = []
    for path, seed in zip(args.model, seeds, strict=True):
        # The checkpoint's own split: its validation sessions were never trained on.
        split = sessions_split(args.data, args.val_share, seed=seed)
        tune = random.Random(0).sample(split.valid, min(args.tune_cases, len(split.valid)))
        transitions = ItemTransitions(split)
        graph = GraphScorer(Checkpoint.load(path))
        if list(graph.index.vocab) != list(transitions.index.vocab):
            raise SystemExit(f"{path}: the checkpoint's vocabulary is not this split's (other data, val share or seed)")
        chosen, best, vectors = 0.0, -1.0, {}
        for weight in args.weights:
            report = evaluate(MixedScorer(graph, transitions, weight, vectors), tune, KS)
            total = report.metrics["recall@20"] + report.metrics["mrr@20"]
            print(f"{os.path.basename(path)} weight {weight:g}: validation {report.metrics}", flush=True)
            if total > best:
                chosen, best = weight, total
        for weight in dict.fromkeys([0.0, chosen]):
            report = evaluate(MixedScorer(graph, transitions, weight, vectors), split.test, KS)
            m = report.metrics
            rows.append(
                [os.path.basename(path), f"{weight:g}", *(f"{100 * m[k]:.2f}" for k in ("recall@20", "mrr@20"))]
            )
            print(rows[-1], flush=True)
    header = ["checkpoint", "transition weight", "Recall@20", "MRR@20"]
    title = f"GCN score + transition score ({os.path.basename(args.data.rstrip('/'))}, weight chosen on validation)"
    show(title, header, rows)
    if not args.no_record:
        note = (
            f"Weights tried: {', '.join(f'{w:g}' for w in args.weights)}; chosen on {len(tune):,} validation cases by "
            "Recall@20 + MRR@20; weight 0 is the GCN alone. Test cases scored once per checkpoint and weight."
        )
        record("score-mix", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
