"""Per-node cost of the global view when serving: ``embed_many`` on the same 256 ml-100k user graphs
with two models that differ only in the view, alternating; median ms per call.

    export RIPPLE_DECAY_SECONDS=100000000
    python bench/global_view_cost.py --data ../shared/data/ml-100k/ml-100k.inter --repeats 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graph_state import UserGraph
from operators import Embedder
from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.global_view import build_global_view
from operators.item_index import ItemIndex
from stream_app.core.settings import Settings
from stream_app.files.histories import DataFormat, load_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/ml-100k/ml-100k.inter")
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--global-k", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(1)
    settings = Settings.from_env()
    split = load_split(Path(args.data), DataFormat.recbole, settings, 0.1, 0)
    plain = EncoderConfig(dim=64, layers=1, hash_buckets=1024, actions=settings.actions, norm_scale=16.0)
    with_view = EncoderConfig(**{**plain.to_dict(), "global_k": args.global_k})
    index = ItemIndex(split.vocab, plain.hash_buckets)
    view = build_global_view([index.rows([e.item_id for e in h]) for h in split.train], index.n_rows, args.global_k)
    tmp = tempfile.mkdtemp()
    paths = {"plain": os.path.join(tmp, "plain.ckpt"), "global": os.path.join(tmp, "global.ckpt")}
    Checkpoint.seeded(plain, seed=0, vocab=split.vocab).save(paths["plain"])
    Checkpoint.seeded(with_view, seed=0, vocab=split.vocab, global_view=view).save(paths["global"])
    graphs = []
    for h in split.train[:256]:
        g = UserGraph(settings.graph_config())
        for ev in h:
            g.apply(ev)
        graphs.append(g)
    models = {m: Embedder(Checkpoint.load(path)) for m, path in paths.items()}
    for e in models.values():
        e.embed_many(graphs)  # warm-up; the model with the view computes its row table here
    times: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(args.repeats):
        for m, e in models.items():
            t = time.perf_counter()
            e.embed_many(graphs)
            times[m].append(time.perf_counter() - t)
    nodes = sum(g.n_nodes for g in graphs)
    for m, ts in times.items():
        print(f"{m}: median {1000 * statistics.median(ts):.2f} ms per embed_many of 256 graphs ({nodes:,} nodes)")
    t = time.perf_counter()
    Checkpoint.load(paths["global"]).encoder.global_terms(torch.tensor([0]))
    print(f"load + the row table of every item, once per model: {1000 * (time.perf_counter() - t):.1f} ms")


if __name__ == "__main__":
    main()
