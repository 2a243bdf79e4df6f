"""What the worker sends, per record: size by embedding encoding, bytes on the wire and CPU by compression codec.

1. The file runner embeds a generated stream; its embeddings are encoded as ``json`` and
   ``f32`` (``RIPPLE_EMBEDDING_ENCODING``), and the final user graphs as the worker's table
   writes them to the changelog (``graph_state`` codec).
2. Each kind of record is packed into Kafka record batches of ``--batch`` records with
   aiokafka's own batch builder (what the worker's producer does) for every codec, and read
   back with aiokafka's batch reader (what a consumer does). Reported per record: bytes in
   the batch, microseconds to build (compress) and to read (decompress); medians of
   ``--repeats`` runs.

    python bench/compression.py --events 20000 --batch 64 --repeats 5
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
from stream_app.embedding_format import embedding_encoder
from stream_app.file_runner import replay
from stream_app.generate import GeneratorSpec, generate_events
from stream_app.records import UserEmbedding
from stream_app.settings import Settings

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64, help="records per Kafka record batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kinds = workload(args.events, tmp)
    header = ["records", "codec", "value B/record", "wire B/record", "vs json none", "build µs/rec", "read µs/rec"]
    rows = []
    baseline = None
    for kind, records in kinds.items():
        value = sum(len(v) for _, v in records) / len(records)
        for name, codec in CODECS.items():
            runs = [measure(records, codec, args.batch) for _ in range(args.repeats)]
            size, build_us, read_us = (median([r[i] for r in runs]) for i in range(3))
            if baseline is None:
                baseline = size
            rows.append(
                [
                    f"{kind} ({len(records):,})",
                    name,
                    f"{value:,.0f}",
                    f"{size:,.0f}",
                    f"{size / baseline:.0%}",
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
            "per record (headers included); `vs json none` = against an uncompressed json embedding."
        )
        record("compression", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
