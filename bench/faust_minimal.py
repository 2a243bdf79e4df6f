"""The smallest Faust agents that drain a topic — the ceiling `bench/worker_ceiling.py` measures the worker against.

One process, one Faust app, one agent on ``--topic`` with ``take_events(--batch-size,
within=--within)``, the same broker settings as the worker. ``--mode consume`` only counts
the events; ``--mode send`` also sends one message per event (key = the event's key, value =
its value) to ``--output`` through the app's producer and waits for the broker's acks per
batch — what the worker does with its embeddings. When ``--expect`` events have been seen it
prints one JSON line ``{"events": N, "seconds": first-to-last event}`` and exits.

    python bench/faust_minimal.py --mode send --topic events --output out --expect 30000 --app-id m1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

import faust
import msgspec


def build(args: argparse.Namespace) -> faust.App:
    datadir = tempfile.mkdtemp(prefix="faust-minimal-")
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.broker}",
        datadir=datadir,
        autodiscover=False,
        topic_partitions=args.partitions,
        topic_disable_leader=True,
        broker_commit_interval=args.commit_interval,
        producer_linger=args.linger,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(args.topic, partitions=args.partitions, **raw)
    state = {"n": 0, "first": 0.0}

    @app.agent(source, name="minimal")
    async def drain(stream: faust.StreamT) -> None:
        producer = None
        async for batch in stream.take_events(args.batch_size, within=args.within):
            if not state["n"]:
                state["first"] = time.perf_counter()
            if args.mode == "send":
                producer = producer or await app.maybe_start_producer()
                pending = [
                    await producer.send(args.output, e.message.key, e.message.value, None, None, None) for e in batch
                ]
                await asyncio.gather(*pending)
            state["n"] += len(batch)
            if state["n"] >= args.expect:
                seconds = time.perf_counter() - state["first"]
                sys.stdout.write(msgspec.json.encode({"events": state["n"], "seconds": seconds}).decode() + "\n")
                sys.stdout.flush()
                shutil.rmtree(datadir, ignore_errors=True)  # os._exit runs no cleanup: /tmp kept one per run
                os._exit(0)  # the measurement is taken; no graceful leave needed

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["consume", "send"], required=True)
    parser.add_argument("--broker", default=os.environ.get("RIPPLE_TEST_BROKER", "127.0.0.1:9092"))
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", default="")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--within", type=float, default=0.05)
    parser.add_argument("--commit-interval", type=float, default=2.8)
    parser.add_argument("--linger", type=float, default=0.005)
    args = parser.parse_args()
    if args.mode == "send" and not args.output:
        parser.error("--mode send needs --output TOPIC")
    app = build(args)
    worker = faust.Worker(app, loglevel="warning")
    worker.spinner = None
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
