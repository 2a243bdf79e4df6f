"""The worker against Faust's own ceiling on this machine: one backlog, drained three ways, side by side.

1. A backlog of ``--events`` generated events (``--users`` users, 4 partitions, key =
   ``user_id``) is produced once to a fresh topic.
2. Each repeat drains that same backlog, each consumer in its own consumer group:
   (a) a minimal Faust agent, ``take_events(batch)``, that only consumes
   (``bench/faust_minimal.py --mode consume``);
   (b) the same agent sending one message per event through the app's producer
   (``--mode send``);
   (c) ``ripple worker`` (``python -m stream_app worker``, the seeded model, default settings
   but the topics), from an empty state.
   Each rate is events over the time from the first processed event to the last: the
   minimal agents time themselves; the worker is polled on ``/metrics`` every 0.25 s.
3. The table shows medians of the repeats and the median of the per-repeat ratios c / b.

    bash deploy/kafka/kafka.sh start
    python bench/worker_ceiling.py --events 30000 --users 3000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec
from kafka import KafkaProducer

from bench.report import markdown, median, record, show, spread
from bench.worker_process import WorkerProcess, worker_env
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.kafka_connection import ensure_topics

HERE = Path(__file__).resolve().parent


def produce_backlog(broker: str, env: dict[str, str], events: int, users: int) -> None:
    ensure_topics(Settings.from_env(env))
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=20, acks=1, batch_size=1 << 18)
    spec = GeneratorSpec(users=users, items=users * 4, events=events, seed=7)
    for line in generate_events(spec):
        key = msgspec.json.decode(line)["user_id"].encode()
        producer.send(env["RIPPLE_INPUT_TOPIC"], key=key, value=line)
    producer.flush()
    producer.close()


def run_minimal(mode: str, broker: str, topic: str, events: int, batch_size: int) -> float:
    name = uuid.uuid4().hex[:8]
    cmd = [
        sys.executable, str(HERE / "faust_minimal.py"), "--mode", mode, "--broker", broker, "--topic", topic,
        "--output", f"minimal-out-{name}", "--app-id", f"minimal-{mode}-{name}", "--expect", str(events),
        "--batch-size", str(batch_size),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    # Faust's worker routes stdout through its logger, so the line may come with a log prefix on stderr.
    found = [line[line.index('{"events"') :].split("}")[0] + "}" for line in (done.stdout + done.stderr).splitlines()
             if '{"events"' in line]  # fmt: skip
    if not found:
        raise RuntimeError(f"minimal agent ({mode}) printed no result:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = msgspec.json.decode(found[-1])
    return result["events"] / result["seconds"]


def metric_sums(worker: WorkerProcess, *prefixes: str) -> list[float]:
    """Per prefix, the sum of the samples on one read of the worker's ``/metrics`` whose line starts with it."""
    _, body = worker.get("/metrics")
    lines = body.decode().splitlines()
    return [sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)) for prefix in prefixes]


def processed(worker: WorkerProcess) -> float:
    (count,) = metric_sums(worker, "ripple_events_processed_total{")
    return count


PROFILE_CATEGORIES = (
    ("/metrics scrapes (this benchmark polls every 0.25 s)", ("metrics_handler",)),
    ("Faust table writes: per-key store + changelog send_soon", ("ManagedUserDict.__setitem__", "on_key_set",
                                                                "ProducerBuffer")),
    ("GCN forward, readout, batch building (operators)", ("(operators/", "(torch")),
    ("graph state: apply, codec, RocksDB reads/writes", ("(graph_state/", "table_store.py")),
    ("publishing embeddings and dead letters", ("StreamWorker.publish", "batch_send.py")),
    ("pipeline bookkeeping and event decoding (stream_app)", ("Pipeline.", "StreamWorker.process_batch",
                                                              "(stream_app/core/events.py",
                                                              "(stream_app/kafka/offset_guard.py")),
    ("Faust's Prometheus sensors", ("sensors/prometheus.py", "prometheus_client")),
    ("Faust + aiokafka: fetch, stream, acks, producer I/O", ("(faust/", "(aiokafka/", "(mode/")),
)  # fmt: skip
"""Where a py-spy sample counts: the first category any frame of its stack matches."""


def profile_table(collapsed: str) -> list[list[str]]:
    """Share of py-spy samples (``--format raw``) per :data:`PROFILE_CATEGORIES` entry."""
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        category = next(
            (name for name, marks in PROFILE_CATEGORIES if any(m in stack for m in marks)),
            "event loop, threads, other",
        )
        counts[category] = counts.get(category, 0) + int(count)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return [[name, f"{100 * n / max(1, total):.1f} %"] for name, n in ranked]


def run_worker(
    broker: str, backlog_env: dict[str, str], events: int, batch_size: int, profile: str | None = None
) -> float:
    name = f"ceiling-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp())
    env = worker_env(broker, name, tmp / "state", batch_size=batch_size, log_level="warning", commit_interval_s=2.8)
    env["RIPPLE_INPUT_TOPIC"] = backlog_env["RIPPLE_INPUT_TOPIC"]
    env["RIPPLE_BATCH_WITHIN_S"] = "0.05"
    worker = WorkerProcess(env, tmp / "worker.log").start()
    try:
        worker.wait_healthy(120)
        spy = None
        if profile:
            assert worker.proc is not None
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(worker.proc.pid), "--format", "raw", "--output", profile,
                 "--rate", "200", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        first = last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = processed(worker)
            now = time.perf_counter()
            if n > 0 and first is None:
                first = (now, n)
            if n >= events:
                last = now
                break
            time.sleep(0.25)
        if first is None or last is None:
            raise RuntimeError(f"worker did not drain the backlog:\n{worker.log()}")
        batches, seen, process, embed = metric_sums(
            worker, "ripple_batch_size_count", "ripple_batch_size_sum", "ripple_batch_seconds_sum",
            "ripple_embed_seconds_sum",
        )  # fmt: skip
        print(
            f"  worker: {seen / max(1.0, batches):.0f} events per micro-batch; per event {1e6 * process / seen:.0f} µs "
            f"in Pipeline.process, {1e6 * embed / seen:.0f} µs of them embedding"
        )
        return (events - first[1]) / max(1e-9, last - first[0])
    finally:
        if profile and spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            spy.wait(30)
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default=os.environ.get("RIPPLE_TEST_BROKER", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--profile", help="py-spy the worker of the last repeat into this file and print where time goes"
    )
    args = parser.parse_args()

    backlog_env = worker_env(args.broker, f"backlog-{uuid.uuid4().hex[:8]}", Path(tempfile.mkdtemp()))
    produce_backlog(args.broker, backlog_env, args.events, args.users)
    topic = backlog_env["RIPPLE_INPUT_TOPIC"]
    consume, send, worker = [], [], []
    for r in range(args.repeats):
        consume.append(run_minimal("consume", args.broker, topic, args.events, args.batch_size))
        send.append(run_minimal("send", args.broker, topic, args.events, args.batch_size))
        last_repeat = r == args.repeats - 1
        profile = args.profile if last_repeat else None
        worker.append(run_worker(args.broker, backlog_env, args.events, args.batch_size, profile))
        print(f"repeat {r + 1}: consume {consume[-1]:,.0f}/s, send {send[-1]:,.0f}/s, worker {worker[-1]:,.0f}/s")
    ratios = [w / s for w, s in zip(worker, send, strict=True)]
    header = ["what drains the backlog", "events/s (median)", "range", "vs (b)"]
    rows = [
        [f"(a) minimal Faust agent, take_events({args.batch_size}), consume only", f"{median(consume):,.0f}",
         spread(consume), f"{median([c / s for c, s in zip(consume, send, strict=True)]):.2f}"],
        [f"(b) minimal Faust agent, take_events({args.batch_size}), one send per event", f"{median(send):,.0f}",
         spread(send), "1.00"],
        ["(c) ripple worker (seeded model, incremental, RocksDB table)", f"{median(worker):,.0f}", spread(worker),
         f"**{median(ratios):.2f}**"],
    ]  # fmt: skip
    if args.profile and os.path.exists(args.profile):
        show("Where the worker's time goes (py-spy)", ["part", "share of samples"],
             profile_table(open(args.profile).read()))  # fmt: skip
    title = f"Worker against Faust's ceiling: {args.events:,} events, {args.users:,} users, 4 partitions"
    show(title, header, rows)
    if not args.no_record:
        note = (
            f"{args.repeats} repeats of (a), (b), (c) on the same pre-produced backlog, each consumer in its own "
            "group; "
            "'vs (b)' is the median of the per-repeat ratios. Broker, benchmark and the agent under test share the "
            "machine's cores."
        )
        record("worker-ceiling", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
