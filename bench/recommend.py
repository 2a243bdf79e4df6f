"""Recommendations over Diginetica's 43,083 items: latency per request, and what RIPPLE_RECOMMEND_TOP costs.

The checkpoint has Diginetica's training vocabulary (the SR-GNN split, ``--val-share 0.05`` as
in the README's training command: 43,083 items) and its serving shape (dim 100, cosine scores
times 16), with seeded, untrained weights: scoring and ranking cost depends on the item
count and the dimension, not on what the weights learned.

1. Per request, one user at a time (what ``GET /users/{id}/recommendations`` and ``ripple
   recommend`` do after reading the graph), over the graphs of Diginetica's test prefixes:
   the forward of one user, and ranking its vector against every item by the method in use
   (a torch matrix product + ``topk``) and by the alternatives measured against it;
2. throughput of the pipeline (``ripple replay``, the code the worker runs per micro-batch) on
   Diginetica test sessions replayed as users, with ``RIPPLE_RECOMMEND_TOP`` 0 (off) and K.

With ``--mixed`` (a checkpoint of ``ripple mix`` on Diginetica, same vocabulary) both also run
with its session-kNN mix: the kNN query of the user's graph and ``w · knn`` added to the scores.

    python bench/recommend.py --data ../shared/data/diginetica [--mixed runs/digi-global/seed0-stan.ckpt]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import markdown, median, record, show, spread
from operators import Checkpoint, Embedder, EncoderConfig, set_threads
from operators.graph_settings import graph_config_of
from operators.offline.datasets import case_graph, sessions_split
from operators.recommend import ItemRanker, exclude_items
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay


def diginetica_checkpoint(data: str, dim: int = 100, val_share: float = 0.05) -> tuple[Checkpoint, list]:
    """The serving-shaped checkpoint with Diginetica's vocabulary, and the test cases of the split."""
    split = sessions_split(data, val_share=val_share, seed=0)
    config = EncoderConfig(dim=dim, norm_scale=16.0)
    return Checkpoint.seeded(config, seed=0, vocab=split.vocab), split.test


def diginetica_events(cases: list, n: int, path: str) -> int:
    """Test sessions as users (one ``view`` per item, a minute apart), as event JSON lines; returns users."""
    written, users = 0, 0
    with open(path, "w") as f:
        for case in cases:
            users += 1
            for t, ev in enumerate(case.history):
                obj = {"event_id": f"{case.user_id}:{t}", "user_id": case.user_id, "item_id": ev.item_id}
                obj |= {"action": "view", "ts": 1_767_225_600 + 60 * t}
                f.write(json.dumps(obj) + "\n")
                written += 1
            if written >= n:
                return users
    return users


def percentiles(ms: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(ms), [50, 99])
    return float(p50), float(p99)


def latency_run(
    checkpoint: Checkpoint, graphs: list, k: int, mixed: Checkpoint | None = None
) -> dict[str, tuple[float, float]]:
    """p50/p99 in ms of each step, one user per request, over ``graphs``."""
    embedder, ranker = Embedder(checkpoint), ItemRanker(checkpoint)
    mixed_ranker = ItemRanker(mixed) if mixed is not None else None
    items_np = ranker.item_vectors.numpy()
    steps = ("embed", "torch", "torch_seen", "numpy", "sort", "total", "mixed")
    out: dict[str, list[float]] = {name: [] for name in steps}
    for g in graphs:
        t0 = time.perf_counter()
        vec = embedder.embed_many([g])
        t1 = time.perf_counter()
        ranker.top(vec, k)
        t2 = time.perf_counter()
        ranker.top(vec, k, seen=[g.items()])
        t3 = time.perf_counter()
        scores = items_np @ vec[0]
        best = np.argpartition(-scores, k)[:k]
        best[np.argsort(-scores[best], kind="stable")]
        t4 = time.perf_counter()
        with torch.inference_mode():
            s = ranker.scores(vec)
            torch.sort(exclude_items(s, ranker.index, [[]]), dim=1, descending=True, stable=True)
        t5 = time.perf_counter()
        if mixed_ranker is not None:
            mixed_ranker.top(vec, k, graphs=[g])
        t6 = time.perf_counter()
        for name, dt in (
            ("embed", t1 - t0),
            ("torch", t2 - t1),
            ("torch_seen", t3 - t2),
            ("numpy", t4 - t3),
            ("sort", t5 - t4),
            ("total", (t1 - t0) + (t2 - t1)),
            ("mixed", t6 - t5),
        ):
            out[name].append(dt * 1e3)
    return {name: percentiles(values) for name, values in out.items()}


def throughput_run(events: str, model: str, top: int, batch_size: int) -> float:
    state = tempfile.mkdtemp(prefix="bench-rec-")
    try:
        settings = Settings.from_env(
            {}, state_dir=state, model_path=model, recommend_top=top, batch_size=batch_size, graph_cache_users=4096
        )
        summary = replay(events, "jsonl", os.devnull, settings, progress=False)
        return summary.events_per_second
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/diginetica")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mixed", default="", help="A `ripple mix` checkpoint of the same vocabulary to time too.")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    set_threads(1)  # as the worker (RIPPLE_TORCH_THREADS=1)

    checkpoint, cases = diginetica_checkpoint(args.data, args.dim)
    n_items = len(checkpoint.index.vocab)
    config = graph_config_of(checkpoint)
    graphs = [case_graph(c, config) for c in cases[: args.requests]]
    mixed = Checkpoint.load(args.mixed) if args.mixed else None
    if mixed is not None and (mixed.knn_mix is None or mixed.index.vocab != checkpoint.index.vocab):
        raise SystemExit(f"{args.mixed}: not a `ripple mix` checkpoint of this split's {n_items:,} items")
    latency_runs = [latency_run(checkpoint, graphs, args.k, mixed) for _ in range(args.repeats)]

    def lat(name: str) -> tuple[str, str]:
        return tuple(f"{median([r[name][i] for r in latency_runs]):.2f}" for i in (0, 1))  # type: ignore[return-value]

    header = ["step (one user per request)", "p50 ms", "p99 ms"]
    rows = [
        ["forward of one user's graph (GCN)", *lat("embed")],
        [f"rank: torch matrix product + topk({args.k}) (in use)", *lat("torch")],
        ["rank: the same, exclude_seen", *lat("torch_seen")],
        [f"rank: numpy matrix product + argpartition({args.k})", *lat("numpy")],
        ["rank: torch matrix product + full stable sort", *lat("sort")],
        ["forward + rank (the view and `ripple recommend`)", *lat("total")],
    ]
    if mixed is not None and mixed.knn_mix is not None:
        rows.append([f"rank with the kNN mix ({mixed.knn_mix.label}): the above + the kNN query", *lat("mixed")])
    title = f"Recommendations: {n_items:,} Diginetica items, dim {args.dim}, top {args.k}, 1 torch thread"
    show(title, header, rows)

    tmp = tempfile.mkdtemp(prefix="bench-rec-data-")
    try:
        model = os.path.join(tmp, "digi.ckpt")
        checkpoint.save(model)
        events = os.path.join(tmp, "events.jsonl")
        users = diginetica_events(cases, args.events, events)
        runs = {"0 (off)": (model, 0), str(args.k): (model, args.k)}
        if mixed is not None:
            runs[f"{args.k}, kNN mix"] = (args.mixed, args.k)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (path, top) in runs.items():  # alternating, so that machine noise hits all alike
                rates[name].append(throughput_run(events, path, top, args.batch_size))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = median(rates["0 (off)"])
    header2 = ["RIPPLE_RECOMMEND_TOP", "events/s (median)", "runs", "vs off"]
    rows2 = [
        [name, f"{median(r):,.0f}", spread(r), f"{(median(r) / base - 1) * 100:+.0f} %" if top else "-"]
        for (name, r), (_, top) in zip(rates.items(), runs.values(), strict=True)
    ]
    title2 = f"Pipeline throughput with and without RIPPLE_RECOMMEND_TOP ({n_items:,} items, batch {args.batch_size})"
    show(title2, header2, rows2)
    if not args.no_record:
        note = (
            f"Medians of {args.repeats} runs. Latency: {len(graphs):,} Diginetica test prefixes, one user per request "
            "(the view adds the HTTP round trip and the RocksDB read: see the online-store table). The checkpoint has "
            f"Diginetica's {n_items:,}-item vocabulary (`sessions_split(val_share=0.05)`) and dim {args.dim}, with "
            "seeded weights (`Checkpoint.seeded`): no trained Diginetica checkpoint was at hand, and the cost of "
            "scoring depends on item count and dimension only. Throughput: the file runner (the pipeline the worker "
            f"runs per micro-batch) on the first {args.events:,} events of Diginetica test sessions replayed as "
            f"{users:,} users, fresh state per run, runs alternating."
        )
        if mixed is not None:
            note += (
                f" The kNN mix rows use `{args.mixed}` (`ripple mix`: {mixed.knn_mix.label if mixed.knn_mix else ''} "
                "over its training sessions), whose trained encoder also embeds its throughput runs."
            )
        record(
            "recommend",
            "Recommendations (43,083 Diginetica items)",
            f"**{title}**\n\n{markdown(header, rows)}\n\n**{title2}**\n\n{markdown(header2, rows2)}\n\n{note}",
        )


if __name__ == "__main__":
    main()
