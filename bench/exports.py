"""Exports of `ripple replay`: every version as JSON lines (the default) against Parquet and one row per user.

The events of ``make demo`` (500 users, 2,000 items, 50,000 events, 1 % malformed), replayed
from a fresh state into each output; sizes of the files and seconds of the runs (medians).

    python bench/exports.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow.parquet as pq

from bench.report import markdown, median, record, show
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, write_events

OUTPUTS = [
    ("every version, JSON lines (default)", "all.jsonl", False),
    ("every version, Parquet", "all.parquet", False),
    ("one row per user, JSON lines (--latest-only)", "latest.jsonl", True),
    ("one row per user, Parquet (--latest-only)", "latest.parquet", True),
]


def rows_of(path: str) -> int:
    if path.endswith(".parquet"):
        return pq.read_metadata(path).num_rows
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-exports-")
    try:
        events = os.path.join(tmp, "events.jsonl")
        write_events(GeneratorSpec(users=500, items=2000, events=50_000, seed=0, malformed=0.01), events)
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in OUTPUTS}
        sizes: dict[str, tuple[int, int]] = {}
        for _ in range(args.repeats):
            for name, file, latest in OUTPUTS:
                state = os.path.join(tmp, "state")
                shutil.rmtree(state, ignore_errors=True)
                out = os.path.join(tmp, file)
                summary = replay(
                    events, "jsonl", out, Settings.from_env({}, state_dir=state), progress=False, latest_only=latest
                )
                seconds[name].append(summary.seconds)
                sizes[name] = (os.path.getsize(out), rows_of(out))
        events_mb = os.path.getsize(events) / 1e6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    header = ["output", "rows", "size MB", "replay seconds"]
    rows = [
        [name, f"{sizes[name][1]:,}", f"{sizes[name][0] / 1e6:.1f}", f"{median(seconds[name]):.1f}"]
        for name, _, _ in OUTPUTS
    ]
    title = f"Exports of the demo's 50,000 events ({events_mb:.1f} MB, 500 users), 64-dim vectors"
    show(title, header, rows)
    if not args.no_record:
        note = (
            f"Medians of {args.repeats} runs of `ripple replay` (seeded model, fresh state each run); Parquet with "
            "zstd. The float32 vectors barely compress: a 64-dim row is 256 bytes of floats plus its keys."
        )
        record("exports", "Exports: every version vs one row per user", markdown(header, rows) + "\n\n" + note)


if __name__ == "__main__":
    main()
