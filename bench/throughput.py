"""Throughput of the embedded runner against the pure-compute limit and a naive engine.

Measured side by side in one run, each repeated ``--repeats`` times (medians):

1. pure-compute limit: only the batched GCN forward (``encoder(batch)``) over the
   graphs of the users each micro-batch touched, with all tensors prebuilt — no
   decoding, no state, no I/O, no tensor building. No engine that recomputes the
   touched users from their graphs can beat it.
   The same forward on 2 torch threads is shown beside it: what both cores give the forward alone.
2. the file runner (``ripple replay``: JSON decode, RocksDB state, incremental
   recompute, JSONL output) on the same events, as configured (its forward, and the records and
   JSON lines of its output, in a second process where 2+ CPUs are usable,
   ``RIPPLE_FORWARD_PROCESS``), and again in one process;
3. the formats and the store alone (:func:`formats_floor`): the same input decoded, the same
   state bytes written, the same output records encoded, and nothing else;
4. naive: one event at a time, no micro-batching, full recompute, no graph cache
   (on a prefix of the events, since it is slow);
5. both engines on the same last ``--tail-events`` events, each from a copy of the state
   the rest of the file built — the fair comparison (the prefix flatters naive: its
   graphs are the smallest of the stream).

Every engine (2-5) is timed in a fresh process of its own, as ``ripple replay`` runs (:func:`fresh`);
``--in-process`` also times the file runner in this process, after it built the limit's tensors.

    python bench/throughput.py --dataset generated --events 1000000
    python bench/throughput.py --dataset ml-100k --data ../shared/data/ml-100k/ml-100k.inter
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import numpy as np
import torch
from rocksdict import WriteBatch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import markdown, median, record, show, spread
from graph_state import MemoryStore, RocksStore, decode, encode, rocks_store
from operators import Embedder, graphs_to_batch, set_threads
from stream_app.core.events import _Wire
from stream_app.core.pipeline import OutputRecords, Pipeline, Published
from stream_app.core.records import UserEmbedding, json_encoder
from stream_app.core.serving import build_pipeline, load_checkpoint
from stream_app.core.settings import Settings
from stream_app.files.file_runner import batched, replay
from stream_app.files.generate import GeneratorSpec, write_events
from stream_app.files.readers import read_events


def capture_batches(path: str, fmt: str, settings: Settings) -> tuple[list, int]:
    """Run the pipeline in memory once and keep, per micro-batch, the graphs it embedded."""
    cfg = settings.graph_config()
    pipeline = build_pipeline(settings, MemoryStore(cfg), cache_users=0)
    embedder = pipeline.embedder
    captured: list[list[bytes]] = []
    inner = embedder.embed_changed

    def spy(graphs, deltas):
        captured.append([encode(g) for g in graphs])
        return inner(graphs, deltas)

    embedder.embed_changed = spy  # type: ignore[method-assign]
    n = 0
    for chunk in batched(read_events(path, fmt), settings.batch_size):
        pipeline.commit(pipeline.process(chunk))
        n += len(chunk)
    index = embedder.checkpoint.index
    batches = [graphs_to_batch([decode(raw, cfg) for raw in graphs], index) for graphs in captured if graphs]
    return batches, n


def compute_limit(batches: list, settings: Settings, threads: int | None = None) -> float:
    """Seconds of the forward alone; ``threads``: torch threads for it (default: the runner's)."""
    encoder = load_checkpoint(settings).encoder
    before = torch.get_num_threads()
    set_threads(threads or settings.torch_threads)
    try:
        started = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                encoder(b)
        return time.perf_counter() - started
    finally:
        set_threads(before)


def fresh(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new interpreter (spawned, not forked), as ``ripple replay`` runs: each engine
    is timed in a process of its own, none in this one after it built the limit's tensors. In this
    process, after :func:`capture_batches` and :func:`compute_limit`, the same runner took 3-40 %
    longer (1.87-2.51 s against 1.78-1.83 s in three probes, 7 % in a recorded run; user CPU, not
    page faults; ``--in-process`` shows it): its graphs were allocated into a fragmented heap
    instead of fresh memory, and the main process is bound by memory latency
    (docs/benchmarks.md, thirteenth round)."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_fresh_child, args=(send, fn, args), name="bench-fresh")
    child.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        status, value = "error", f"the process running {fn.__name__} died (exit code {child.exitcode})"
    child.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def _fresh_child(send: Connection, fn: Callable[..., Any], args: tuple) -> None:
    import traceback

    try:
        send.send(("ok", fn(*args)))
    except BaseException:
        send.send(("error", traceback.format_exc()))


def stolen_ticks() -> int | None:
    """The CPUs' time their host took (``steal`` in ``/proc/stat``, in clock ticks); ``None`` off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


def steal_share(before: int | None, after: int | None, seconds: float) -> float | None:
    """The share of all CPUs' time the host took between two :func:`stolen_ticks` readings."""
    if before is None or after is None or seconds <= 0:
        return None
    return (after - before) / os.sysconf("SC_CLK_TCK") / (seconds * (os.cpu_count() or 1))


def run_replay(path: str, fmt: str, settings: Settings) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        s = settings.with_overrides(state_dir=os.path.join(tmp, "state"))
        summary = replay(path, fmt, os.path.join(tmp, "out.jsonl"), s, progress=False)
    return summary.seconds


def run_without_forward(path: str, fmt: str, settings: Settings) -> float:
    """:func:`run_replay` with the GCN left out (:func:`without_forward`)."""
    with without_forward():
        return run_replay(path, fmt, settings)


@contextlib.contextmanager
def without_forward() -> Iterator[None]:
    """The file runner with the GCN left out (a measurement, not a mode): every embedding is a
    fixed vector of the model's output's magnitude, not zeros — writing ``0.0`` as JSON is ~6x
    cheaper than writing a real float32 (0.29 vs 1.87 µs a 64-dimensional record), which made
    this bound too generous.

    What stays is the per-event work no forward pass can remove — decoding, ``apply``, state
    reads and writes, batching bookkeeping, output records — so ``limit / (limit + floor)``
    bounds what "file runner / limit" can reach without making that work cheaper.
    """
    fixed: dict[int, np.ndarray] = {}

    def stand_in(self: Embedder, graphs: list, deltas: list) -> np.ndarray:
        dim = self.checkpoint.config.dim
        if dim not in fixed:
            fixed[dim] = np.tanh(np.random.default_rng(0).standard_normal(dim)).astype(np.float32)
        return np.broadcast_to(fixed[dim], (len(graphs), dim))

    original = Embedder.embed_changed
    Embedder.embed_changed = stand_in  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        Embedder.embed_changed = original  # type: ignore[method-assign]


def formats_floor(path: str, fmt: str, settings: Settings) -> float:
    """Seconds the file's formats and the store alone take for what the runner reads and writes,
    with none of Ripple's logic between them (a floor for every runner with this input, state
    and output, whatever its design).

    A first run of the runner records the exact bytes of every state write of every micro-batch
    and every published record; the timed part then only (1) reads the file and decodes each
    event with msgspec (:func:`read_events`, no validation), (2) writes the same state bytes to a
    fresh RocksDB with the runner's options, one batch per micro-batch (no reads: a runner that
    kept every graph in memory would need none), and (3) writes the same records' JSON lines into
    a file, one call per micro-batch, made the cheapest way the runner knows (orjson from the
    vectors, ``OutputRecords.json_lines``: msgspec's bytes).
    """
    writes: list[list[tuple[bytes, bytes]]] = []
    published: list[list[UserEmbedding]] = []
    inner_batch, inner_open, inner_embed = rocks_store.WriteBatch, rocks_store.Rdict, Pipeline.embed

    class RecordingBatch:
        def __init__(self, raw_mode: bool) -> None:
            self.real, self.puts = inner_batch(raw_mode=raw_mode), []

        def put(self, key: bytes, value: bytes) -> None:
            self.puts.append((key, value))
            self.real.put(key, value)

        def delete(self, key: bytes) -> None:
            self.real.delete(key)

    class RecordingDb:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.db = inner_open(*args, **kwargs)

        def write(self, batch: RecordingBatch, options: object) -> None:
            self.db.write(batch.real, options)
            writes.append(batch.puts)

        def __getattr__(self, name: str) -> object:
            return getattr(self.db, name)

    def embed(self: Pipeline, graphs: Mapping, deltas: Mapping | None = None) -> list[UserEmbedding]:
        out = inner_embed(self, graphs, deltas)
        published.append(out)
        return out

    rocks_store.WriteBatch, rocks_store.Rdict, Pipeline.embed = RecordingBatch, RecordingDb, embed  # type: ignore[assignment,misc,method-assign]
    try:
        run_replay(path, fmt, settings)
    finally:
        rocks_store.WriteBatch, rocks_store.Rdict, Pipeline.embed = inner_batch, inner_open, inner_embed  # type: ignore[misc,method-assign]
    wire = msgspec.json.Decoder(_Wire)
    output = OutputRecords(load_checkpoint(settings), None)
    columns = [
        (
            Published(
                [r.user_id for r in records],
                [r.state_version for r in records],
                [r.last_event_id for r in records],
                [r.event_ts for r in records],
                [r.n_nodes for r in records],
            ),
            np.array([r.embedding for r in records], dtype=np.float32),
            records,
        )
        for records in published
        if records
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = RocksStore(os.path.join(tmp, "state"), settings.graph_config(), settings.rocks_options())
        db, options = store._db, store._write_opts
        started = time.perf_counter()
        for raw in read_events(path, fmt):
            wire.decode(raw.value)
        for puts in writes:
            batch = WriteBatch(raw_mode=True)
            for key, value in puts:
                batch.put(key, value)
            db.write(batch, options)
        with open(os.path.join(tmp, "out.jsonl"), "wb") as out:
            for states, vectors, records in columns:
                lines = output.json_lines(states, vectors)
                out.write(json_encoder.encode_lines(records) if lines is None else lines)
                out.flush()
        seconds = time.perf_counter() - started
        store.close()
    return seconds


def run_naive(path: str, fmt: str, settings: Settings, limit: int) -> tuple[float, int]:
    """Batch size 1, full recompute, no graph cache — through the same file runner."""
    prefix = os.path.join(tempfile.mkdtemp(), "prefix")
    with open(path, "rb") as src, open(prefix, "wb") as dst:
        for n, line in enumerate(src):
            if n > limit:  # header line + limit events for the csv-like formats
                break
            dst.write(line)
    naive = settings.with_overrides(batch_size=1, graph_cache_users=0, incremental=False, forward_process="off")
    seconds = run_replay(prefix, fmt, naive)
    events = sum(1 for _ in read_events(prefix, fmt))
    return seconds, events


def split_tail(path: str, fmt: str, tail: int) -> tuple[str, str, int]:
    """Write the file's events minus the last ``tail`` and the last ``tail`` (headers kept)."""
    with open(path, "rb") as f:
        lines = f.readlines()
    header, body = ([], lines) if fmt == "jsonl" else (lines[:1], lines[1:])
    tmp = tempfile.mkdtemp()
    head_path, tail_path = os.path.join(tmp, "head"), os.path.join(tmp, "tail")
    with open(head_path, "wb") as f:
        f.writelines(header + body[:-tail])
    with open(tail_path, "wb") as f:
        f.writelines(header + body[-tail:])
    return head_path, tail_path, len(body[-tail:])


def same_state_comparison(path: str, fmt: str, settings: Settings, tail: int) -> tuple[float, float, int]:
    """Seconds of the file runner and of the naive engine on the same last events, from the same state."""
    head_path, tail_path, n = split_tail(path, fmt, tail)
    with tempfile.TemporaryDirectory() as tmp:
        warm = os.path.join(tmp, "warm")
        replay(head_path, fmt, os.devnull, settings.with_overrides(state_dir=warm), progress=False)
        shutil.copytree(warm, os.path.join(tmp, "naive"))
        runner = replay(tail_path, fmt, os.devnull, settings.with_overrides(state_dir=warm), progress=False)
        naive_settings = settings.with_overrides(
            state_dir=os.path.join(tmp, "naive"),
            batch_size=1,
            graph_cache_users=0,
            incremental=False,
            forward_process="off",
        )
        naive = replay(tail_path, fmt, os.devnull, naive_settings, progress=False)
    return runner.seconds, naive.seconds, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["generated", "ml-100k"], default="generated")
    parser.add_argument("--data", default="../shared/data/ml-100k/ml-100k.inter")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--tail-events", type=int, default=5_000, help="Events both engines run from the same state.")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="Also time the file runner in this benchmark's own process (after it built the limit's tensors).",
    )
    args = parser.parse_args()

    settings = Settings.from_env(batch_size=args.batch_size)
    set_threads(settings.torch_threads)
    if args.dataset == "generated":
        path = os.path.join(tempfile.mkdtemp(), "events.jsonl")
        write_events(GeneratorSpec(users=args.users, items=args.items, events=args.events, seed=1), path)
        fmt, label = "jsonl", f"generated ({args.events:,} events, {args.users:,} users, {args.items:,} items)"
    else:
        path, fmt, label = args.data, "recbole", "ml-100k (100,000 ratings, 943 users)"

    batches, n_events = capture_batches(path, fmt, settings)
    limit_s, runner_s, floor_s, formats_s, naive_s, tail_runner_s, tail_naive_s = [], [], [], [], [], [], []
    limit2_s, one_process_s, here_s = [], [], []
    steal: list[float | None] = []
    naive_n = tail_n = 0
    in_process = settings.with_overrides(forward_process="off")
    for _ in range(args.repeats):
        before = compute_limit(batches, settings)
        limit2_s.append(compute_limit(batches, settings, threads=2))
        ticks, started = stolen_ticks(), time.perf_counter()
        runner_s.append(fresh(run_replay, path, fmt, settings))
        steal.append(steal_share(ticks, stolen_ticks(), time.perf_counter() - started))
        # The limit just before and just after the runner: their mean is the runner's pair (this
        # machine's speed drifts by 15-30 % within minutes; one side alone lets the drift into the ratio).
        limit_s.append((before + compute_limit(batches, settings)) / 2)
        if args.in_process:
            here_s.append(run_replay(path, fmt, settings))
        one_process_s.append(fresh(run_replay, path, fmt, in_process))
        floor_s.append(fresh(run_without_forward, path, fmt, in_process))
        formats_s.append(fresh(formats_floor, path, fmt, in_process))
        seconds, naive_n = fresh(run_naive, path, fmt, settings, args.naive_events)
        naive_s.append(seconds)
        r_s, n_s, tail_n = fresh(same_state_comparison, path, fmt, settings, args.tail_events)
        tail_runner_s.append(r_s)
        tail_naive_s.append(n_s)
    limit_eps = [n_events / s for s in limit_s]
    runner_eps = [n_events / s for s in runner_s]
    naive_eps = [naive_n / s for s in naive_s]
    floor_eps = [n_events / s for s in floor_s]
    ratios = [r / lim for r, lim in zip(runner_eps, limit_eps, strict=True)]
    one_eps = [n_events / s for s in one_process_s]
    one_ratios = [r / lim for r, lim in zip(one_eps, limit_eps, strict=True)]
    limit2_eps = [n_events / s for s in limit2_s]
    bounds = [lim / (lim + fl) for lim, fl in zip(limit_s, floor_s, strict=True)]
    beside = [min(1.0, lim / fl) for lim, fl in zip(limit_s, floor_s, strict=True)]
    formats_eps = [n_events / s for s in formats_s]
    format_bounds = [lim / (lim + fl) for lim, fl in zip(limit_s, formats_s, strict=True)]
    speedups = [r / n for r, n in zip(runner_eps, naive_eps, strict=True)]
    header = ["engine", "events/s (median)", "range", "vs limit", "vs naive"]
    rows = [
        ["pure-compute limit (forward only)", f"{median(limit_eps):,.0f}", spread(limit_eps), "1.00", ""],
        [
            "pure-compute limit, 2 torch threads (both cores)",
            f"{median(limit2_eps):,.0f}",
            spread(limit2_eps),
            f"{median([a / b for a, b in zip(limit2_eps, limit_eps, strict=True)]):.2f}",
            "",
        ],
        [
            f"file runner (batch {args.batch_size}, incremental, forward process: {settings.forward_process})",
            f"{median(runner_eps):,.0f}",
            spread(runner_eps),
            f"{median(ratios):.2f}",
            f"{median(speedups):.1f}x",
        ],
        *(
            [
                [
                    "file runner, in this benchmark's process (after the limit's tensors were built)",
                    f"{median([n_events / x for x in here_s]):,.0f}",
                    spread([n_events / x for x in here_s]),
                    f"{median([n_events / x / lim for x, lim in zip(here_s, limit_eps, strict=True)]):.2f}",
                    "",
                ]
            ]
            if here_s
            else []
        ),
        [
            "file runner, one process (RIPPLE_FORWARD_PROCESS=off)",
            f"{median(one_eps):,.0f}",
            spread(one_eps),
            f"{median(one_ratios):.2f}",
            "",
        ],
        [
            "file runner without the GCN (state, I/O, bookkeeping only)",
            f"{median(floor_eps):,.0f}",
            spread(floor_eps),
            f"≤ {median(bounds):.2f} with a full forward in-process, ≤ {median(beside):.2f} beside it",
            "",
        ],
        [
            "formats and store alone (msgspec in, the same RocksDB writes, JSON out)",
            f"{median(formats_eps):,.0f}",
            spread(formats_eps),
            f"≤ {median(format_bounds):.2f} for any design",
            "",
        ],
        [
            f"naive (batch 1, full, first {naive_n:,} events)",
            f"{median(naive_eps):,.0f}",
            spread(naive_eps),
            "",
            "1.0x",
        ],
        [
            f"file runner, last {tail_n:,} events (same state as naive)",
            f"{median([tail_n / x for x in tail_runner_s]):,.0f}",
            spread([tail_n / x for x in tail_runner_s]),
            "",
            f"{median([n / r for r, n in zip(tail_runner_s, tail_naive_s, strict=True)]):.1f}x",
        ],
        [
            f"naive, last {tail_n:,} events (same state)",
            f"{median([tail_n / x for x in tail_naive_s]):,.0f}",
            spread([tail_n / x for x in tail_naive_s]),
            "",
            "1.0x",
        ],
    ]
    title = f"Throughput on {label}"
    show(title, header, rows)
    if any(x is not None for x in steal):
        print("host steal during the file runner's runs:", ", ".join(f"{x:.1%}" for x in steal if x is not None))
    if not args.no_record:
        note = (
            f"{args.repeats} repeats, side by side; ratios are medians of per-repeat ratios, the limit of a "
            "repeat the mean of its runs just before and just after the file runner's. Every engine but "
            "the limit runs in a fresh process of its own, as `ripple replay` does (`fresh`). "
            "'With a full forward in-process' is limit / (limit + the runner without the GCN): the best "
            "'vs limit' a runner doing that same per-event work and the limit's full forward one after the "
            "other could show; 'beside it' is limit / the runner without the GCN, the best with the forward "
            "in a second process (RIPPLE_FORWARD_PROCESS, on where 2+ CPUs are usable) if the runner kept "
            "all that work; the file runner passes it where its incremental engine recomputes fewer nodes "
            "than the full forward (graphs of 32 nodes or more), or as the second process also makes its "
            "JSON lines (docs/benchmarks.md). 'For any design' is limit / (limit + the formats "
            "and the store alone): reading and decoding the same input, writing the same state bytes and "
            "encoding the same output records, with no logic between them — what the frameworks leave. "
            f"{sum(b.num_graphs for b in batches):,} user recomputes in {len(batches):,} micro-batches."
        )
        shares = [x for x in steal if x is not None]
        if shares:
            note += (
                f" The host took {', '.join(f'{x:.1%}' for x in shares)} of the CPUs' time during the file "
                "runner's runs (`steal` in /proc/stat): the runner needs both CPUs and loses whenever either "
                "is taken, the one-thread limit does not, so the ratio falls with it."
            )
        record(f"throughput-{args.dataset}", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
