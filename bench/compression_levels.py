"""CPU and size of the worker's Kafka compression per codec and level (``RIPPLE_PRODUCER_COMPRESSION_LEVEL``).

Compresses what the worker sends — one record batch of 256 embeddings (JSON, 64 floats each)
and one of 256 changelog records (graph state of users with ~15 generated events) — with
aiokafka's own encoders, the way its batch builder calls them: at aiokafka's fixed levels
(level 0 here: zstd 3, lz4 9, gzip 9) and at the levels the setting allows. CPU time per
record is the median of ``--repeats`` timings of 50 compressions each.

    python bench/compression_levels.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec
import numpy as np

from bench.report import markdown, median, record, show
from graph_state import UserGraph
from graph_state.codec import encode
from stream_app.core.events import BehaviorEvent
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.compression import aiokafka_encoders

RECORDS = 256


def embedding_payload() -> bytes:
    rng = np.random.default_rng(0)
    return b"".join(
        msgspec.json.encode(
            {"user_id": f"u{i}", "vector": rng.standard_normal(64).astype(np.float32).tolist(),
             "model_version": "3f9c2a1b", "event_ts": 1.767e9 + i, "computed_at": 1.767e9 + i, "events_seen": 15}
        )
        for i in range(RECORDS)
    )  # fmt: skip


def changelog_payload() -> bytes:
    config = Settings.from_env({}).graph_config()
    graphs: dict[str, UserGraph] = {}
    for line in generate_events(GeneratorSpec(users=RECORDS, items=20_000, events=RECORDS * 15, seed=1)):
        event = msgspec.json.decode(line, type=BehaviorEvent)
        graphs.setdefault(event.user_id, UserGraph(config)).apply(event)
    return b"".join(encode(graph, include_cache=False) for graph in graphs.values())


def cost(encoder, payload: bytes, repeats: int) -> tuple[float, float]:
    """(median µs per record, compression ratio)."""
    out = encoder(payload)
    timings = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(50):
            encoder(payload)
        timings.append((time.process_time() - started) / 50 / RECORDS * 1e6)
    return median(timings), len(payload) / len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 3, 9])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    payloads = {"embeddings": embedding_payload(), "changelog": changelog_payload()}
    header = ["codec", "level", *(f"{name} µs/record" for name in payloads), *(f"{name} ratio" for name in payloads)]
    rows = []
    for codec in ("zstd", "lz4", "gzip"):
        for level in args.levels:
            encoder = aiokafka_encoders(level)[f"{codec}_encode"]
            results = [cost(encoder, payload, args.repeats) for payload in payloads.values()]
            rows.append(
                [codec, "0 (aiokafka's own)" if level == 0 else str(level),
                 *(f"{us:.1f}" for us, _ in results), *(f"{ratio:.2f}" for _, ratio in results)]
            )  # fmt: skip
    title = f"Compression per codec and level: batches of {RECORDS} embeddings and {RECORDS} changelog records"
    show(title, header, rows)
    if not args.no_record:
        note = (
            f"CPU time per record (median of {args.repeats} timings of 50 compressions of one batch), and "
            "uncompressed / compressed size. aiokafka's own levels (level 0): zstd 3, lz4 9, gzip 9. "
            "The worker compresses one embedding and one changelog record per event."
        )
        record("compression-levels", title, markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
