"""Kafka end to end: sustained events/s of one worker, then event-to-embedding latency at
25/50/80 % of that rate — the real broker, the real worker process, a real consumer.

1. ``--backlog`` events are produced before the worker starts; the sustained rate is the
   number of events over the time from the worker's first to its last embedding.
2. For each load level, events are produced at that fraction of the sustained rate for
   ``--seconds``, each carrying ``ts`` = its send time; a consumer of the embeddings topic
   takes ``receive time - event_ts`` of every embedding (``event_ts`` is the ``ts`` of the
   newest event behind it) — what a ranking service reading the topic would see.

    bash deploy/kafka/kafka.sh start
    python bench/kafka_e2e.py --backlog 60000 --seconds 20 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaProducer

from bench.report import markdown, median, record, show
from bench.worker_process import WorkerProcess, worker_env
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.kafka_connection import ensure_topics


class _Stamp(msgspec.Struct):
    """The one field of an embedding record the latency needs (msgspec skips the vector without building it)."""

    event_ts: float


_decode_stamp = msgspec.json.Decoder(_Stamp)


class Collector(threading.Thread):
    """Consumes the embeddings topic, remembering (receive time, embedding event_ts).

    An aiokafka consumer (C record parsing) on an event loop of its own: kafka-python's
    pure-Python fetch path cost 14 to 25 % of a core at 1,800 records/s, CPU the worker
    under test then lacked.
    """

    def __init__(self, broker: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic = broker, topic
        self.seen: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.cpu = 0.0
        """CPU seconds this thread has used so far (updated after every poll)."""

    def run(self) -> None:
        asyncio.run(self._consume())

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.broker, auto_offset_reset="earliest", fetch_max_wait_ms=10
        )
        await consumer.start()
        self.ready.set()
        try:
            while not self.stop.is_set():
                batches = await consumer.getmany(timeout_ms=50)
                now = time.time()
                for records in batches.values():
                    self.seen.extend((now, _decode_stamp.decode(rec.value).event_ts) for rec in records)
                self.cpu = time.thread_time()
        finally:
            await consumer.stop()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``), NaN when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    """The pid of the broker ``deploy/kafka/kafka.sh`` started, or None (a broker started otherwise)."""
    data = Path(os.environ.get("RIPPLE_KAFKA_DATA", Path(__file__).resolve().parent.parent / ".kafka-data"))
    try:
        return int((data / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def events(n: int, seed: int, stamp: bool) -> list[tuple[bytes, dict]]:
    out = []
    for line in generate_events(GeneratorSpec(users=5000, items=20000, events=n, seed=seed)):
        obj = msgspec.json.decode(line)
        out.append((obj["user_id"].encode(), obj))
    return out


def produce_paced(broker: str, topic: str, items: list[tuple[bytes, dict]], rate: float) -> float:
    """Produce ``items`` at ``rate`` events/s from a process of its own; returns its CPU share of one core.

    The load generator runs in a separate process that does nothing else, and paces in ticks
    of 5 ms (every tick sends what is due; no sleep per message), so it neither steals the
    worker's interpreter nor burns a core on timing. Each event carries ``ts`` = its send time.
    """
    ctx = multiprocessing.get_context("spawn")
    result = ctx.Queue()
    proc = ctx.Process(target=_paced_producer, args=(broker, topic, items, rate, result))
    proc.start()
    cpu_share = result.get(timeout=600)
    proc.join(60)
    return cpu_share


def _paced_producer(broker: str, topic: str, items: list[tuple[bytes, dict]], rate: float, result) -> None:
    result.put(asyncio.run(_produce_paced(broker, topic, items, rate)))


async def _produce_paced(broker: str, topic: str, items: list[tuple[bytes, dict]], rate: float) -> float:
    """Every 5 ms tick, hand what is due to aiokafka's producer (C record builder, ~12 µs per message).

    The messages of a tick join the open batch of their partition, so when the broker is slow
    for a moment the batches grow and the backlog goes out in the next requests. (Sending a new
    record batch of its own per tick did not: a request carries one batch per partition, so a
    generator that fell behind once stayed behind by the same amount for good.) kafka-python's
    ``send`` cost the generator 27 to 40 % of a core at 900 to 2,900 events/s.
    """
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5, acks=1)
    await producer.start()
    encode = msgspec.json.encode
    cpu0, started = time.process_time(), time.perf_counter()
    sent, pending = 0, []
    while sent < len(items):
        due = min(len(items), int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            key, obj = items[sent]
            obj["ts"] = time.time()
            pending.append(await producer.send(topic, key=key, value=encode(obj)))
            sent += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*pending)
    wall = time.perf_counter() - started
    cpu = (time.process_time() - cpu0) / max(wall, 1e-9)
    await producer.stop()
    return cpu


def one_run(broker: str, backlog: int, seconds: float, levels: list[float], seed: int, batch_size: int) -> dict:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp())
    env = worker_env(broker, name, tmp / "state", batch_size=batch_size, log_level="warning", commit_interval_s=1.0)
    if wait := os.environ.get("RIPPLE_CONSUMER_FETCH_MAX_WAIT_S"):  # else the worker's default (0.05 s)
        env["RIPPLE_CONSUMER_FETCH_MAX_WAIT_S"] = wait
    ensure_topics(Settings.from_env(env))
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5, acks=1)
    for key, obj in events(backlog, seed, stamp=False):
        producer.send(env["RIPPLE_INPUT_TOPIC"], key=key, value=msgspec.json.encode(obj))
    producer.flush()
    collector = Collector(broker, env["RIPPLE_OUTPUT_TOPIC"])
    collector.start()
    collector.ready.wait(60)
    worker = WorkerProcess(env, tmp / "worker.log").start()
    assert worker.proc is not None
    result: dict = {}
    try:
        worker.wait_healthy(120)
        deadline = time.time() + 600
        while time.time() < deadline:
            _, body = worker.get("/metrics")
            done = sum(
                float(line.rsplit(" ", 1)[1])
                for line in body.decode().splitlines()
                if line.startswith("ripple_events_processed_total{")
            )
            if done >= backlog:
                break
            time.sleep(0.5)
        times = [t for t, _ in collector.seen]
        rate = backlog / (max(times) - min(times))
        result["rate"] = rate
        kafka_pid = broker_pid()
        result["topics"] = [env["RIPPLE_OUTPUT_TOPIC"], f"{env['RIPPLE_APP_ID']}-user-graphs-changelog"]
        for level in levels:
            start_mark = time.time()
            batch = events(int(rate * level * seconds), seed + int(level * 100), stamp=True)
            consumer_cpu, started = collector.cpu, time.time()
            worker_cpu, kafka_cpu = cpu_seconds(worker.proc.pid), cpu_seconds(kafka_pid)
            result[f"cpu{level}"] = produce_paced(broker, env["RIPPLE_INPUT_TOPIC"], batch, rate * level)
            time.sleep(2.0)
            wall = time.time() - started
            result[f"consumer{level}"] = (collector.cpu - consumer_cpu) / wall
            result[f"worker{level}"] = (cpu_seconds(worker.proc.pid) - worker_cpu) / wall
            result[f"broker{level}"] = (cpu_seconds(kafka_pid) - kafka_cpu) / wall
            lat = [t - ts for t, ts in collector.seen if ts >= start_mark]
            result[level] = np.percentile(np.asarray(lat) * 1e3, [50, 95, 99]).tolist() if lat else [float("nan")] * 3
    finally:
        worker.stop()
        collector.stop.set()
        collector.join(5)
        producer.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default=os.environ.get("RIPPLE_TEST_BROKER", "127.0.0.1:9092"))
    parser.add_argument("--backlog", type=int, default=60_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    levels = [0.25, 0.5, 0.8]
    runs = [one_run(args.broker, args.backlog, args.seconds, levels, r, args.batch_size) for r in range(args.repeats)]
    rate = median([r["rate"] for r in runs])
    header = ["load", "events/s offered", "p50 ms", "p95 ms", "p99 ms", "worker CPU", "broker CPU",
              "load generator CPU", "consumer CPU"]  # fmt: skip
    rows = [["sustained (backlog)", f"{rate:,.0f}", "", "", "", "", "", "", ""]]
    for level in levels:
        p = [median([r[level][i] for r in runs]) for i in range(3)]
        cpu = [median([r[f"{part}{level}"] for r in runs]) for part in ("worker", "broker", "cpu", "consumer")]
        rows.append(
            [f"{level:.0%} of sustained", f"{rate * level:,.0f}", f"{p[0]:.0f}", f"{p[1]:.0f}", f"{p[2]:.0f}",
             *(f"{c:.0%}" for c in cpu)]
        )  # fmt: skip
    title = f"Kafka end to end: one worker, 4 partitions, batch {args.batch_size}"
    show(title, header, rows)
    if not args.no_record:
        note = (
            f"Medians of {args.repeats} runs (each with a fresh topic, group and state); sustained = {args.backlog:,} "
            f"pre-produced events over first-to-last embedding; latency levels ran {args.seconds:.0f} s each, "
            "measured by a consumer of the embeddings topic as receive time minus the newest event's send time. "
            "CPU columns are shares of one core during each level: the worker process, the broker's JVM, "
            "the load generator (a process of its own handing each 5 ms tick's events to an aiokafka producer) and "
            "the measuring consumer (an aiokafka thread reading only each record's event_ts). "
            "All four share the 2 cores. "
            f"Fetch wait: {os.environ.get('RIPPLE_CONSUMER_FETCH_MAX_WAIT_S', 'the default 0.05')} s."
        )
        record("kafka-e2e", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
