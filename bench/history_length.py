"""Cost per event against history length: windows of 50..5000 nodes, full vs incremental recompute.

Each user's window is filled first (1.5x the window in distinct-ish items, so edges
and evictions are realistic); then every measured micro-batch brings one new event
per user, through the same pipeline and RocksDB store the file runner uses.

    python bench/history_length.py --windows 50 200 1000 5000 --users 8 --batches 30
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec
import torch

from bench.report import markdown, median, record, show
from graph_state import RocksStore, UserGraph
from operators import set_threads
from stream_app.core.events import BehaviorEvent
from stream_app.core.records import RawRecord
from stream_app.core.serving import build_pipeline, load_checkpoint
from stream_app.core.settings import Settings

BASE_TS = 1_767_225_600.0


def event(user: int, n: int, item: int, ts: float) -> RawRecord:
    obj = {"event_id": f"{user}-{n}", "user_id": f"u{user}", "item_id": f"i{item}", "action": "view", "ts": ts}
    return RawRecord(msgspec.json.encode(obj))


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
"""``cpu``: the process's CPU time (RocksDB's background threads included): on a shared machine it
does not count the time other processes held the core, which wall time does."""


def measure(
    window: int, users: int, batches: int, incremental: bool, seed: int, clock: str = "cpu"
) -> tuple[float, float, float, dict[str, float]]:
    """Median and mean ms per event over the measured batches, the share of nodes recomputed, and the
    median ms per event of each stage: ``embed`` (the engine), ``write`` (encoding and storing the
    graphs) and ``rest`` (decoding the events, ``apply``, the records).

    The median is a typical batch; the mean also carries what comes in bursts (RocksDB's memtable
    flushes and compactions run on its own threads and count in CPU time), so it is the throughput."""
    now = CLOCKS[clock]
    rng = random.Random(seed)
    settings = Settings.from_env(max_nodes=window, incremental=incremental)
    cfg = settings.graph_config()
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = build_pipeline(
            settings, RocksStore(os.path.join(tmp, "db"), cfg, settings.rocks_options()), cache_users=4096
        )
        store, embedder = pipeline.store, pipeline.embedder
        # Fill every window directly (no embedding), like a long history replayed earlier.
        graphs = {}
        for u in range(users):
            g = UserGraph(cfg)
            for n in range(int(window * 1.5)):
                raw = event(u, n, rng.randrange(2 * window), BASE_TS + n).value
                g.apply(msgspec.json.decode(raw, type=BehaviorEvent))
            graphs[f"u{u}"] = g
        store.put_many(graphs)
        step = int(window * 1.5)
        in_embed = [0.0]
        embed_changed = embedder.embed_changed

        def timed_embed(*args: object, **kwargs: object) -> object:
            started = now()
            try:
                return embed_changed(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                in_embed[0] += now() - started

        embedder.embed_changed = timed_embed  # type: ignore[method-assign]
        timings: list[float] = []
        stages: dict[str, list[float]] = {"embed": [], "write": [], "rest": []}
        for b in range(batches + 2):
            records = [event(u, step + b, rng.randrange(2 * window), BASE_TS + step + b) for u in range(users)]
            in_embed[0] = 0.0
            started = now()
            result = pipeline.process(records)
            processed = now()
            pipeline.commit(result)
            done = now()
            if b >= 2:  # the first batches build the caches
                timings.append((done - started) / users * 1e3)
                stages["embed"].append(in_embed[0] / users * 1e3)
                stages["write"].append((done - processed) / users * 1e3)
                stages["rest"].append((processed - started - in_embed[0]) / users * 1e3)
        stats = embedder.incremental.stats
        share = stats["recomputed_nodes"] / max(1, stats["total_nodes"])
        store.close()
    return (
        median(timings),
        sum(timings) / len(timings),
        share,
        {name: median(values) for name, values in stages.items()},
    )


def readout_ms(window: int, users: int, repeats: int = 200, clock: str = "cpu") -> float:
    """The incremental engine's readout alone over ``users`` graphs of ``window`` nodes, ms per user.

    The readout attends over every node with the newest behaviour as the query, so every
    node's weight changes with every event: its cost is a floor of any engine that serves
    this model, incremental or not. Measured as the engine runs it: each graph's node states
    and cached readout terms in arrays of their own (``GraphEncoder.readout_cached``).
    """
    encoder = load_checkpoint(Settings.from_env()).encoder
    d = encoder.config.dim
    with torch.inference_mode():
        parts = []
        for _ in range(users):
            h = torch.randn(window, d)
            parts.append((h.numpy(), encoder.readout_terms(h, torch.randint(0, 16, (window,))).numpy()))
        h_last = torch.stack([torch.from_numpy(h[-1]) for h, _ in parts])
        for _ in range(5):
            encoder.readout_cached(h_last, parts)
        started = CLOCKS[clock]()
        for _ in range(repeats):
            encoder.readout_cached(h_last, parts)
    return (CLOCKS[clock]() - started) / repeats / users * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, nargs="+", default=[50, 200, 1000, 5000])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="what a millisecond is (see CLOCKS)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    set_threads(1)
    results: dict[tuple[int, bool], list[float]] = {}
    means: dict[int, list[float]] = {}
    shares: dict[int, float] = {}
    split: dict[int, dict[str, list[float]]] = {}
    for r in range(args.repeats):
        for window in args.windows:
            for incremental in (False, True):
                ms, mean, share, stages = measure(
                    window, args.users, args.batches, incremental, seed=r, clock=args.clock
                )
                results.setdefault((window, incremental), []).append(ms)
                if incremental:
                    means.setdefault(window, []).append(mean)
                    shares[window] = share
                    for name, value in stages.items():
                        split.setdefault(window, {}).setdefault(name, []).append(value)
    readout = {window: readout_ms(window, args.users, clock=args.clock) for window in args.windows}
    base = median(results[(args.windows[0], True)])
    base_mean = median(means[args.windows[0]])
    header = [
        "window (nodes)",
        "full ms/event",
        "incremental ms/event",
        "full / incr",
        "incr vs smallest",
        "incr mean ms/event",
        "mean vs smallest",
        "nodes recomputed",
        "readout alone ms/event",
        "incr: engine / write / rest ms",
    ]
    rows = []
    for window in args.windows:
        full, incr = median(results[(window, False)]), median(results[(window, True)])
        rows.append(
            [
                f"{window:,}",
                f"{full:.2f}",
                f"{incr:.2f}",
                f"{full / incr:.1f}x",
                f"{incr / base:.2f}x",
                f"{median(means[window]):.2f}",
                f"{median(means[window]) / base_mean:.2f}x",
                f"{shares[window]:.1%}",
                f"{readout[window]:.2f}",
                " / ".join(f"{median(split[window][name]):.2f}" for name in ("embed", "write", "rest")),
            ]
        )
    title = "Cost per event against history length"
    show(title, header, rows)
    if not args.no_record:
        note = (
            f"{args.clock.upper()} time; {args.users} users, one event per user per micro-batch, "
            f"{args.batches} measured batches, "
            f"medians of {args.repeats} repeats. 'ms/event' is the median batch of a run, 'mean' the run's mean "
            "(with the bursts of RocksDB's background flushes and compactions: the throughput); "
            "'nodes recomputed' is the share of node-layer rows the "
            "incremental engine recomputed (the rest came from the cache). 'readout alone' is the attention "
            "readout by itself over the same number of nodes (every node's weight changes with every event, "
            "so no engine serving this model can skip it): a floor of the incremental cost. The last column "
            "splits the incremental ms/event: the engine (`embed_changed`), encoding and writing the graphs "
            "(`commit`, RocksDB's background work included in CPU time), and the rest (event decoding, `apply`, "
            "the records)."
        )
        record("history-length", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
