"""What the worker sends, per record: size by embedding encoding, bytes on the wire and CPU by compression codec.

1. The file runner embeds a generated stream; its embeddings are encoded as ``json`` and
   ``f32`` (``RIPPLE_EMBEDDING_ENCODING``), and the final user graphs as the worker's table
   writes them to the changelog (``graph_state`` codec).
2. Each kind of record is packed into Kafka record batches of ``--batch`` records with
   aiokafka's own batch builder (what the worker's producer does) for every codec, and read
   back with aiokafka's batch reader (what a consumer does). Reported per record: bytes in
   the batch, microseconds to build (compress) and to read (decompress); medians of
   ``--repeats`` runs.
3. With ``--e2e N``: the real worker drains a backlog of N events on the real broker once per
   ``RIPPLE_PRODUCER_COMPRESSION`` (the codecs taking turns, ``--repeats`` rounds): the
   sustained events/s (``bench/kafka_e2e.py``'s first phase) and the bytes the embeddings and
   changelog topics hold afterwards.

    python bench/codec_sizes.py --events 20000 --batch 64 --repeats 5
    bash deploy/kafka/kafka.sh start
    python bench/codec_sizes.py --e2e 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from bench.report import markdown, median, record, show
from graph_state import RocksStore, encode
from stream_app.core.embedding_format import embedding_encoder
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def workload(events: int, tmp: str) -> dict[str, list[tuple[bytes, bytes]]]:
    """(key, value) records of each kind: embeddings as json and f32, changelog graphs."""
    path = os.path.join(tmp, "events.jsonl")
    with open(path, "wb") as f:
        for line in generate_events(GeneratorSpec(users=max(50, events // 20), items=5000, events=events, seed=5)):
            f.write(line + b"\n")
    settings = Settings.from_env({}, state_dir=os.path.join(tmp, "state"))
    out = os.path.join(tmp, "out.jsonl")
    replay(path, "jsonl", out, settings, progress=False)
    with open(out, "rb") as f:
        embeddings = [msgspec.json.decode(line, type=UserEmbedding) for line in f]
    kinds = {
        f"embedding, {enc}": [(e.user_id.encode(), embedding_encoder(enc)(e)) for e in embeddings]
        for enc in ("json", "f32")
    }
    store = RocksStore(settings.state_dir, settings.graph_config(), settings.rocks_options())
    try:
        users = sorted({e.user_id for e in embeddings})
        graphs = store.get_many(users)
        kinds["changelog (user graph)"] = [(u.encode(), encode(g)) for u, g in graphs.items()]
    finally:
        store.close()
    return kinds


def build(records: list[tuple[bytes, bytes]], codec: int, batch: int) -> list[bytes]:
    out = []
    for start in range(0, len(records), batch):
        builder = DefaultRecordBatchBuilder(
            magic=2,
            compression_type=codec,
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=-1,
            batch_size=16 << 20,
        )
        for i, (key, value) in enumerate(records[start : start + batch]):
            builder.append(i, timestamp=None, key=key, value=value, headers=[])
        out.append(bytes(builder.build()))
    return out


def read(batches: list[bytes]) -> int:
    return sum(1 for raw in batches for _ in DefaultRecordBatch(raw))


def measure(records: list[tuple[bytes, bytes]], codec: int, batch: int) -> tuple[float, float, float]:
    """(bytes per record, µs to build per record, µs to read per record)."""
    started = time.perf_counter()
    batches = build(records, codec, batch)
    built = time.perf_counter()
    assert read(batches) == len(records)
    done = time.perf_counter()
    n = len(records)
    return sum(map(len, batches)) / n, (built - started) / n * 1e6, (done - built) / n * 1e6


def topic_bytes(broker: str, topics: list[str]) -> int:
    """Bytes of record batches the topics hold (a raw fetch of every partition, nothing decompressed)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.protocol.fetch import FetchRequest
    from kafka.record import MemoryRecords

    consumer = KafkaConsumer(bootstrap_servers=broker, api_version_auto_timeout_ms=5000)
    total = 0
    try:
        client = consumer._client
        for topic in topics:
            for partition in sorted(consumer.partitions_for_topic(topic) or ()):
                node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
                offset = 0
                while True:
                    while not client.ready(node):
                        client.poll(timeout_ms=100)
                    request = FetchRequest[4](-1, 100, 1, 32 << 20, 0, [(topic, [(partition, offset, 32 << 20)])])
                    future = client.send(node, request)
                    client.poll(future=future, timeout_ms=30_000)
                    ((_, (part,)),) = future.value.topics
                    records, fetched = MemoryRecords(part[-1]), 0
                    while records.has_next():
                        batch = records.next_batch()
                        total += batch.size_in_bytes
                        offset, fetched = batch.next_offset, fetched + 1
                    if not fetched:
                        break
    finally:
        consumer.close()
    return total


def end_to_end(broker: str, backlog: int, repeats: int, codecs: list[str]) -> tuple[list[str], list[list[str]]]:
    """Sustained events/s and output bytes per event of the real worker, per producer compression."""
    from bench.kafka_e2e import one_run

    rates: dict[str, list[float]] = {c: [] for c in codecs}
    sizes: dict[str, list[float]] = {c: [] for c in codecs}
    for _ in range(repeats):
        for codec in codecs:  # codecs take turns: the machine's noise spreads over all of them
            # WorkerProcess passes the environment on; worker_env sets no RIPPLE_PRODUCER_COMPRESSION.
            os.environ["RIPPLE_PRODUCER_COMPRESSION"] = codec
            result = one_run(broker, backlog, 0.0, [], seed=7, batch_size=256)
            rates[codec].append(result["rate"])
            sizes[codec].append(topic_bytes(broker, result["topics"]) / backlog)
    os.environ.pop("RIPPLE_PRODUCER_COMPRESSION", None)
    header = ["RIPPLE_PRODUCER_COMPRESSION", "sustained events/s", "runs", "embeddings + changelog, B/event"]
    rows = [
        [c, f"{median(rates[c]):,.0f}", ", ".join(f"{r:,.0f}" for r in rates[c]), f"{median(sizes[c]):,.0f}"]
        for c in codecs
    ]
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64, help="records per Kafka record batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--e2e", type=int, default=0, help="backlog of the end-to-end runs (0: skip them)")
    parser.add_argument("--broker", default=os.environ.get("RIPPLE_TEST_BROKER", "127.0.0.1:9092"))
    parser.add_argument("--codecs", default="none,snappy,lz4,zstd", help="codecs of the end-to-end runs")
    args = parser.parse_args()
    if args.e2e:
        header, rows = end_to_end(args.broker, args.e2e, args.repeats, args.codecs.split(","))
        title = f"Producer compression end to end: one worker drains {args.e2e:,} events"
        show(title, header, rows)
        if not args.no_record:
            note = (
                f"Medians of {args.repeats} rounds; in each round every codec runs once (fresh topics, group and "
                "state): the worker drains the pre-produced backlog (generated events, 5,000 users), events/s over "
                "first to last embedding as in `bench/kafka_e2e.py`. Bytes = record batches held by the embeddings and "
                "changelog topics afterwards (json embeddings), per input event. Broker, producer, worker and consumer "
                "share the 2 cores with other work: compare rows, not runs."
            )
            record("compression-e2e", title, markdown(header, rows) + "\n\n" + note)
        return
    with tempfile.TemporaryDirectory() as tmp:
        kinds = workload(args.events, tmp)
    header = ["records", "codec", "value B/record", "wire B/record", "vs none", "vs json none", "build µs/rec"]
    header.append("read µs/rec")
    rows = []
    json_none = None
    for kind, records in kinds.items():
        value = sum(len(v) for _, v in records) / len(records)
        baseline = None
        for name, codec in CODECS.items():
            runs = [measure(records, codec, args.batch) for _ in range(args.repeats)]
            size, build_us, read_us = (median([r[i] for r in runs]) for i in range(3))
            if baseline is None:
                baseline = size
            if json_none is None:
                json_none = size
            rows.append(
                [
                    f"{kind} ({len(records):,})",
                    name,
                    f"{value:,.0f}",
                    f"{size:,.0f}",
                    f"{size / baseline:.0%}",
                    f"{size / json_none:.0%}" if kind.startswith("embedding") else "",
                    f"{build_us:.1f}",
                    f"{read_us:.1f}",
                ]
            )
    title = "Record size by embedding encoding and compression codec"
    show(title, header, rows)
    if not args.no_record:
        note = (
            f"Medians of {args.repeats} runs. {args.events:,} generated events through the file runner (64-d default "
            f"model); batches of {args.batch} records built and read with aiokafka 0.14's own record-batch classes "
            "(cramjam for snappy/lz4/zstd, zlib level 9 for gzip, as aiokafka's producer does). `wire` = batch bytes "
            "per record (headers included); `vs none` = against the same records uncompressed; `vs json none` = "
            "against an uncompressed json embedding (what the worker sent before issue 13)."
        )
        record("compression", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
