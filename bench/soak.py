"""Soak: resident memory and RocksDB size of a long run over many users, sampled every N seconds.

An endless stream of generated events (``--users`` users drawing from ``--items``
items, uniformly, so every user's window fills at about the same time; a share of
malformed messages) runs through one engine for ``--minutes``:

- ``embedded``: the file runner's stack (``RocksStore`` + graph LRU + ``Pipeline``, commit
  with progress metadata, every embedding and dead letter JSON-encoded), in this process;
- ``worker``: ``python -m stream_app worker`` on the real broker (fresh topics and group),
  fed by a paced kafka-python producer; the worker process is sampled.

Every ``--every`` seconds one row: events so far, rate, users in state, share of users
whose window is full, resident memory (RSS, from /proc), and the RocksDB directory size.
At the end the rows after the windows filled are fitted with a line: the slope (MiB per
minute) says whether memory and disk are flat.

    python bench/soak.py --engine embedded --minutes 12 --users 20000 --items 50000 --every 30
    python bench/soak.py --engine worker --minutes 12 --users 20000 --rate 600 --every 30 --record
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec

from bench.report import markdown, record, show

ACTIONS = ("view", "view", "view", "click", "cart", "purchase", "rate")
BAD = (b'{"event_id": "x", ', b"\xff\xfe", b"[]", b'{"user_id": 7}')


def rss_mib(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def dir_mib(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # compaction removed it meanwhile
    return total / (1 << 20)


def endless_events(users: int, items: int, seed: int, malformed: float) -> Iterator[tuple[bytes, bytes | None]]:
    """(value, key) forever: uniform users and items, time moving ~3 ms per event."""
    rng = random.Random(seed)
    ts = 1_767_225_600.0
    n = 0
    while True:
        n += 1
        ts += 0.003
        user = f"u{rng.randrange(users)}"
        if rng.random() < malformed:
            yield rng.choice(BAD), user.encode()
            continue
        action = rng.choice(ACTIONS)
        event: dict[str, object] = {
            "event_id": f"s{n}",
            "user_id": user,
            "item_id": f"i{rng.randrange(items)}",
            "action": action,
        }
        event["ts"] = round(ts, 3)
        if action == "rate":
            event["weight"] = float(rng.randint(1, 5))
        yield msgspec.json.encode(event), user.encode()


@dataclass
class Sample:
    elapsed_s: float
    events: int
    rate: float
    users: int
    full: float
    rss: float
    rocks: float
    dead: int
    lag: float | None = None
    """Worker engine: the worker's consumer lag (events behind), from its /metrics."""


@dataclass
class Tracker:
    """Users seen and users whose window reached ``max_nodes`` (from the published n_nodes)."""

    max_nodes: int
    seen: set[str] = field(default_factory=set)
    full: set[str] = field(default_factory=set)

    def saw(self, user: str, n_nodes: int) -> None:
        self.seen.add(user)
        if n_nodes >= self.max_nodes:
            self.full.add(user)


def run_embedded(args: argparse.Namespace, state: str, on_sample) -> None:
    from graph_state import RocksStore
    from operators import set_threads
    from stream_app.core.pipeline import BatchResult
    from stream_app.core.records import RawRecord, json_encoder
    from stream_app.core.serving import build_pipeline
    from stream_app.core.settings import Settings

    settings = Settings.from_env(state_dir=state, batch_size=args.batch_size)
    set_threads(settings.torch_threads)
    store = RocksStore(state, settings.graph_config(), settings.rocks_options())
    pipeline = build_pipeline(settings, store)
    tracker = Tracker(settings.max_nodes)
    stream = endless_events(args.users, args.items, args.seed, args.malformed)
    events = dead = 0
    start = last = time.monotonic()
    last_events = 0
    sink = open(os.devnull, "wb")

    class Output:  # the file runner's FileOutput, writing nowhere
        def publish(self, result: BatchResult) -> None:
            for emb in result.embeddings:
                sink.write(json_encoder.encode(emb))
                tracker.saw(emb.user_id, emb.n_nodes)
            for letter in result.dead_letters:
                sink.write(json_encoder.encode(letter))

    output = Output()
    try:
        while time.monotonic() - start < args.minutes * 60:
            chunk = [
                RawRecord(value, key, "soak", 0, events + i)
                for i, (value, key) in enumerate(next(stream) for _ in range(args.batch_size))
            ]
            result = pipeline.run(chunk, output, {"progress": str(events + len(chunk)).encode()})
            events += len(chunk)
            dead += len(result.dead_letters)
            now = time.monotonic()
            if now - last >= args.every:
                on_sample(Sample(now - start, events, (events - last_events) / (now - last), len(tracker.seen),
                                 len(tracker.full) / args.users, rss_mib(), dir_mib(state), dead))  # fmt: skip
                last, last_events = now, events
    finally:
        sink.close()
        store.close()


def run_worker(args: argparse.Namespace, state: str, on_sample) -> None:
    from kafka import KafkaProducer

    from bench.worker_process import TopicReader, WorkerProcess, worker_env
    from stream_app.core.records import embedding_decoder
    from stream_app.core.settings import Settings

    name = "soak-" + uuid.uuid4().hex[:8]
    env = worker_env(args.broker, name, Path(state) / "worker", batch_size=args.batch_size)
    settings = Settings.from_env(env)
    from stream_app.kafka.kafka_connection import ensure_topics

    ensure_topics(settings)
    worker = WorkerProcess(env, Path(state) / "worker.log").start()
    producer = KafkaProducer(bootstrap_servers=args.broker, linger_ms=20, batch_size=256 << 10, acks=1)
    out = TopicReader(args.broker, settings.output_topic)
    tracker = Tracker(settings.max_nodes)
    stream = endless_events(args.users, args.items, args.seed, args.malformed)
    try:
        worker.wait_healthy(120)
        assert worker.proc is not None
        pid = worker.proc.pid
        start = last = time.monotonic()
        sent = last_sent = 0
        while (now := time.monotonic()) - start < args.minutes * 60:
            due = int((now - start) * args.rate)
            while sent < due:
                value, key = next(stream)
                producer.send(settings.input_topic, key=key, value=value)
                sent += 1
            producer.flush()
            # Follow the embeddings topic (the consumer's memory is this process's, not the worker's).
            for records in out._ensure().poll(timeout_ms=200, max_records=20000).values():
                for message in records:
                    emb = embedding_decoder.decode(message.value)
                    tracker.saw(emb.user_id, emb.n_nodes)
            if worker.proc.poll() is not None:
                raise RuntimeError(f"the worker stopped:\n{worker.log()}")
            if now - last >= args.every:
                _, body = worker.get("/metrics")
                lag = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in body.decode().splitlines()
                    if line.startswith("ripple_consumer_lag{")
                )
                dead = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in body.decode().splitlines()
                    if line.startswith("ripple_dead_letters_total{")
                )
                on_sample(Sample(now - start, sent, (sent - last_sent) / (now - last), len(tracker.seen),
                                 len(tracker.full) / args.users, rss_mib(pid), dir_mib(env["RIPPLE_STATE_DIR"]),
                                 int(dead), lag))  # fmt: skip
                last, last_sent = now, sent
    finally:
        producer.close()
        out.close()
        worker.stop()


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("embedded", "worker"), default="embedded")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--malformed", type=float, default=0.01)
    parser.add_argument("--rate", type=float, default=600.0, help="worker engine: events/s produced")
    parser.add_argument("--broker", default="127.0.0.1:9092")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    samples: list[Sample] = []

    def on_sample(s: Sample) -> None:
        samples.append(s)
        print(
            f"{s.elapsed_s / 60:6.1f} min  {s.events:>10,} ev  {s.rate:>7,.0f} ev/s  users {s.users:>6,}  "
            f"full {s.full:6.1%}  RSS {s.rss:7.1f} MiB  RocksDB {s.rocks:7.1f} MiB  dead {s.dead:,}"
            + ("" if s.lag is None else f"  lag {s.lag:,.0f}"),
            flush=True,
        )

    state = tempfile.mkdtemp(prefix="ripple-soak-")
    try:
        (run_embedded if args.engine == "embedded" else run_worker)(args, state, on_sample)
    finally:
        shutil.rmtree(state, ignore_errors=True)

    header = ["min", "events", "events/s", "users", "windows full", "RSS MiB", "RocksDB MiB", "dead letters"]
    if args.engine == "worker":
        header.append("consumer lag")
    rows = [
        [f"{s.elapsed_s / 60:.1f}", f"{s.events:,}", f"{s.rate:,.0f}", f"{s.users:,}", f"{s.full:.0%}",
         f"{s.rss:.0f}", f"{s.rocks:.0f}", f"{s.dead:,}", *([] if s.lag is None else [f"{s.lag:,.0f}"])]
        for s in samples
    ]  # fmt: skip
    title = f"Soak, {args.engine}: {args.users:,} users, {args.items:,} items, {args.minutes:g} min"
    show(title, header, rows)
    # Flat? Fit the samples once 95 % of the windows are full.
    steady = [s for s in samples if s.full >= 0.95]
    if len(steady) >= 2:
        t = [s.elapsed_s / 60 for s in steady]
        rss_slope = slope(t, [s.rss for s in steady])
        rocks_slope = slope(t, [s.rocks for s in steady])
        verdict = (
            f"Once 95 % of the windows were full ({t[0]:.1f} min, {len(steady)} samples): RSS "
            f"{min(s.rss for s in steady):.0f}-{max(s.rss for s in steady):.0f} MiB, slope {rss_slope:+.2f} MiB/min; "
            f"RocksDB {min(s.rocks for s in steady):.0f}-{max(s.rocks for s in steady):.0f} MiB, "
            f"slope {rocks_slope:+.2f} MiB/min."
        )
    else:
        verdict = "The windows never filled (95 %): run longer or with fewer users."
    print(verdict)
    if args.record:
        body = markdown(header, rows) + "\n\n" + verdict
        record(f"soak-{args.engine}", title, body)


if __name__ == "__main__":
    main()
