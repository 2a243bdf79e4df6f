"""Online-store lookups: a user's vector from Redis (written by `ripple feed`) against the worker's web views,
under the same concurrent load.

One worker serves the Diginetica-vocabulary checkpoint of ``bench/recommend.py`` (43,083 items,
dim 100) on the real broker; Diginetica test sessions are replayed into it as users; one
`ripple feed` writes the embeddings topic into a real redis-server (AOF on). Once the feed has
caught up (the stream is idle), ``--clients`` client processes each send ``--requests`` lookups of
random known users, one at a time over one persistent connection, to each target in turn:

* Redis: ``HGETALL ripple:user:<id>`` (redis-py), the vector decoded with numpy;
* the worker: ``GET /users/<id>/embedding`` (the stored graph embedded again, per request);
* the worker: ``GET /users/<id>/recommendations?k=20`` (that plus ranking 43,083 items).

Then the feed's own rate: ``--feed-records`` synthetic 100-dim records produced to a fresh
topic, one fresh feed (batch ``RIPPLE_FEED_BATCH_SIZE``, default 1000) writing them to Redis,
timed between 10 % and 90 % written; and the feed's memory (RSS).

    bash deploy/kafka/kafka.sh start
    python bench/online_store.py --data ../shared/data/diginetica --clients 8 --requests 500 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.feed_process import FeedProcess, create_topic, feed_env, produce, wait_committed
from bench.feed_process import record as embedding_record
from bench.recommend import diginetica_checkpoint, diginetica_events
from bench.redis_server import RedisServer
from bench.report import markdown, median, record, show
from bench.worker_process import TopicReader, WorkerProcess, worker_env
from stream_app.core.settings import Settings
from stream_app.kafka.produce import produce_events

TARGETS = ("redis", "embedding", "recommendations")


def client(target: str, address: str, prefix: str, users: list[str], requests: int, seed: int, go, out) -> None:
    """One client process: ``requests`` lookups of random users, one at a time, once every client is connected
    (``go``, a barrier); sends back its latencies in ms and its elapsed seconds."""
    rng = random.Random(seed)
    latencies = []
    if target == "redis":
        import redis

        r = redis.Redis.from_url(address)
        r.ping()
        go.wait()
        started = time.perf_counter()
        for _ in range(requests):
            key = prefix + rng.choice(users)
            t0 = time.perf_counter()
            h = r.hgetall(key)
            np.frombuffer(h[b"embedding"], dtype="<f4")
            latencies.append((time.perf_counter() - t0) * 1e3)
    else:
        import http.client

        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.connect()
        suffix = "embedding" if target == "embedding" else "recommendations?k=20"
        go.wait()
        started = time.perf_counter()
        for _ in range(requests):
            path = f"/users/{rng.choice(users)}/{suffix}"
            t0 = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            latencies.append((time.perf_counter() - t0) * 1e3)
            assert resp.status == 200, (path, resp.status, body[:200])
    out.put((latencies, time.perf_counter() - started))


def load(target: str, address: str, prefix: str, users: list[str], clients: int, requests: int, seed: int) -> dict:
    ctx = multiprocessing.get_context("fork")
    queue, go = ctx.Queue(), ctx.Barrier(clients)
    procs = [
        ctx.Process(target=client, args=(target, address, prefix, users, requests, seed * 1000 + n, go, queue))
        for n in range(clients)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    latencies = [x for lat, _ in results for x in lat]
    wall = max(elapsed for _, elapsed in results)  # all clients started together
    for p in procs:
        p.join(30)
        assert p.exitcode == 0, f"a {target} client failed"
    p50, p99 = np.percentile(np.asarray(latencies), [50, 99])
    return {"p50": float(p50), "p99": float(p99), "rps": len(latencies) / wall}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def feed_rate(broker: str, redis_url: str, n: int, tmp: Path) -> tuple[float, float]:
    """(records/s written by one feed, its RSS in MiB after writing them)."""
    name = f"rate-{uuid.uuid4().hex[:8]}"
    topic = f"emb-{name}"
    create_topic(broker, topic)
    messages = [
        (f"u{i % 20_000}", embedding_record(f"u{i % 20_000}", 1 + i // 20_000, seed=i, dim=100)) for i in range(n)
    ]
    produce(broker, topic, messages)
    feed = FeedProcess(feed_env(broker, redis_url, name, topic, log_level="warning"), tmp / f"{name}.log").start()
    try:
        feed.wait_healthy(60)
        marks: list[tuple[float, float]] = []
        deadline = time.monotonic() + 600
        while not marks or marks[-1][1] < n:
            assert time.monotonic() < deadline, feed.log()
            marks.append((time.perf_counter(), feed.metric("ripple_feed_written_total")))
            time.sleep(0.1)
        t10, w10 = next((t, w) for t, w in marks if w >= 0.1 * n)
        t90, w90 = next((t, w) for t, w in marks if w >= 0.9 * n)
        assert feed.proc is not None
        return (w90 - w10) / (t90 - t10), rss_mib(feed.proc.pid)
    finally:
        feed.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default=os.environ.get("RIPPLE_TEST_BROKER", "127.0.0.1:9092"))
    parser.add_argument("--data", default="../shared/data/diginetica")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500, help="Per client and target.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--feed-records", type=int, default=50_000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-online-"))
    checkpoint, cases = diginetica_checkpoint(args.data)
    model = tmp / "digi.ckpt"
    checkpoint.save(model)
    events = str(tmp / "events.jsonl")
    n_users = diginetica_events(cases, args.events, events)
    users = [c.user_id for c in cases[:n_users]]

    name = f"bench-{uuid.uuid4().hex[:8]}"
    redis_server = RedisServer(tmp / "redis", appendfsync="everysec").start()
    env = worker_env(args.broker, name, tmp / "state", model_path=model, log_level="warning")
    settings = Settings.from_env(env)
    fenv = feed_env(args.broker, redis_server.url, name, settings.output_topic, log_level="warning")
    produce_events(events, "jsonl", settings, progress=False)
    worker = WorkerProcess(env, tmp / "worker.log").start()
    feed = FeedProcess(fenv, tmp / "feed.log").start()
    runs: dict[str, list[dict]] = {t: [] for t in TARGETS}
    rates: list[float] = []
    rss: dict[str, float] = {}
    try:
        worker.wait_healthy(120)
        feed.wait_healthy(60)
        out = TopicReader(args.broker, settings.output_topic)
        out.until(lambda r: {e.user_id for e in r.embeddings()} >= set(users), timeout=600, what="every user")
        ends: dict[int, int] = {}
        for m in out.messages:
            ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
        out.close()
        wait_committed(args.broker, fenv["RIPPLE_FEED_GROUP"], settings.output_topic, ends, timeout=300, feed=feed)
        addresses = {
            "redis": redis_server.url,
            "embedding": f"127.0.0.1:{env['RIPPLE_WEB_PORT']}",
            "recommendations": f"127.0.0.1:{env['RIPPLE_WEB_PORT']}",
        }
        prefix = fenv["RIPPLE_REDIS_KEY_PREFIX"]
        for repeat in range(args.repeats):
            for target in TARGETS:  # interleaved, so that machine noise hits all alike
                runs[target].append(load(target, addresses[target], prefix, users, args.clients, args.requests, repeat))
                print(target, runs[target][-1], flush=True)
        assert feed.proc is not None and worker.proc is not None
        rss = {"feed (idle)": rss_mib(feed.proc.pid), "worker": rss_mib(worker.proc.pid)}
        for _ in range(args.repeats):
            rate, rss["feed (after writing)"] = feed_rate(args.broker, redis_server.url, args.feed_records, tmp)
            rates.append(rate)
            print("feed rate", rate, flush=True)
    finally:
        worker.stop()
        feed.stop()
        redis_server.stop()

    labels = {
        "redis": "Redis `HGETALL` (ripple feed's store)",
        "embedding": "worker `GET /users/{id}/embedding`",
        "recommendations": "worker `GET /users/{id}/recommendations?k=20`",
    }
    header = ["lookup", "p50 ms", "p99 ms", "requests/s"]
    rows = [
        [
            labels[t],
            f"{median([r['p50'] for r in runs[t]]):.2f}",
            f"{median([r['p99'] for r in runs[t]]):.2f}",
            f"{median([r['rps'] for r in runs[t]]):,.0f}",
        ]
        for t in TARGETS
    ]
    title = f"Online-store lookups: {args.clients} concurrent clients, {n_users:,} users, idle stream"
    show(title, header, rows)
    header2 = ["ripple feed", "value"]
    rows2 = [
        ["records/s written to Redis (one feed, batch 1000, 100-dim)", f"{median(rates):,.0f}"],
        *[[f"RSS of the {what}, MiB", f"{mib:,.0f}"] for what, mib in rss.items()],
    ]
    show("ripple feed", header2, rows2)
    if not args.no_record:
        note = (
            f"Medians of {args.repeats} runs, targets interleaved; each run: {args.clients} client processes x "
            f"{args.requests} lookups of random users, one at a time over a persistent connection. The worker serves "
            f"the Diginetica-vocabulary checkpoint (43,083 items, dim 100, seeded weights) after "
            f"{args.events:,} events of Diginetica test sessions as {n_users:,} users; the feed had written all of "
            "them to Redis (AOF, `appendfsync everysec`) before the lookups began. Clients, Redis, broker, worker and "
            "feed share the 2 cores."
        )
        note2 = (
            f"Feed rate: median of {args.repeats} runs, each a fresh feed and group on a fresh topic of "
            f"{args.feed_records:,} pre-produced records (20,000 users), timed from 10 % to 90 % written "
            "(`ripple_feed_written_total`), offsets committed per batch."
        )
        body = f"{markdown(header, rows)}\n\n{note}\n\n{markdown(header2, rows2)}\n\n{note2}"
        record("online-store", "Online-store lookups: Redis vs the worker's view", body)


if __name__ == "__main__":
    main()
