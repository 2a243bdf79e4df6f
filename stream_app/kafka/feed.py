"""``ripple feed``: the embeddings topic into an online store — the latest vector of every user in Redis.

A ranking service then reads one key per user (a few hundred microseconds) instead of
asking a worker to re-run the GCN or consuming the topic itself. Per batch, in this order:

1. poll up to ``RIPPLE_FEED_BATCH_SIZE`` records of the embeddings topic (consumer group
   ``RIPPLE_FEED_GROUP``; several feeds of one group share the partitions, each partition's
   records come in offset order);
2. write them to Redis in one pipelined round trip, each through :data:`WRITE_SCRIPT`, a Lua
   script Redis runs atomically: a record replaces the user's hash unless the hash holds a
   higher ``state_version`` (an older or redelivered record never overwrites a newer one); a
   tombstone (null value, ``ripple forget``) deletes the key;
3. while Redis is unreachable, retry step 2 with exponential backoff (at most
   ``RIPPLE_FEED_RETRY_MAX_S`` between tries), forever: the consumer's partitions are paused
   and it keeps polling, so the group keeps its partitions, and nothing is committed;
4. commit the batch's offsets (only now: a committed offset is always in Redis).

A crash anywhere (``kill -9`` included) redelivers from the last commit; writing a record
again is harmless (same or older ``state_version``), so the store ends equal to the topic's
latest record per user. Redis itself must keep what it acknowledged across its restarts
(AOF persistence, docs/operations.md); if it loses data, ``ripple feed --from-beginning``
rebuilds it from the topic (the topic's retention must then cover every user's latest record:
compact it).

Layout: key ``RIPPLE_REDIS_KEY_PREFIX + user_id``, a hash with ``embedding`` (the vector as
little-endian float32 bytes), ``model_version``, ``state_version``, ``event_ts`` and
``computed_at`` (decimal strings), ``last_event_id``, and ``recommendations`` (JSON, only when
the worker publishes them: ``RIPPLE_RECOMMEND_TOP``). :meth:`OnlineStore.get` reads it back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import numpy as np

from stream_app.core.embedding_format import decode_embedding
from stream_app.core.metrics import FeedMetrics
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings

log = logging.getLogger("ripple.feed")

LAG_INTERVAL_S = 2.0
POLL_TIMEOUT_S = 0.5
FIRST_RETRY_S = 0.1

WRITE_SCRIPT = """
-- KEYS[1]: the user's key. ARGV[1]: '' for a tombstone, else a MessagePack array
-- {state_version, field, value, ...}; ARGV[2]: the vector's bytes (Redis' cmsgpack has no bin type).
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
  return 2
end
local fields = cmsgpack.unpack(ARGV[1])
local stored = redis.call('HGET', KEYS[1], 'state_version')
if stored and tonumber(stored) > fields[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'embedding', ARGV[2], unpack(fields, 2))
return 1
"""
"""Atomic in Redis: the compare on ``state_version`` and the replacement cannot interleave with another
feed's write of the same user. Equal versions are written again (a redelivery: the same vector). One
script call per record keeps it usable on a Redis Cluster (one key per call); the fields travel as one
MessagePack argument because packing a command's arguments is most of redis-py's cost per record."""
SKIPPED, WRITTEN, DELETED = 0, 1, 2

E_REDIS_DOWN = "Redis at {url} is unreachable ({cause}); retrying in {delay:.1f} s, committing nothing meanwhile"
I_REDIS_BACK = "Redis at %s is reachable again after %.1f s; %d record(s) written"


@dataclass(frozen=True)
class StoredEmbedding:
    """One user's entry in the online store."""

    user_id: str
    embedding: np.ndarray
    model_version: str
    state_version: int
    event_ts: float
    computed_at: float
    last_event_id: str
    recommendations: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "user_id": self.user_id,
            "embedding": self.embedding.tolist(),
            "model_version": self.model_version,
            "state_version": self.state_version,
            "event_ts": self.event_ts,
            "computed_at": self.computed_at,
            "last_event_id": self.last_event_id,
        }
        if self.recommendations is not None:
            out["recommendations"] = self.recommendations
        return out


@dataclass
class WriteCounts:
    written: int = 0
    skipped: int = 0
    deleted: int = 0


_pack = msgspec.msgpack.Encoder()


def script_args(emb: UserEmbedding) -> tuple[bytes, bytes]:
    """:data:`WRITE_SCRIPT`'s arguments for one record: the packed fields and the vector's bytes."""
    fields: list[int | str] = [
        emb.state_version,
        "model_version",
        emb.model_version,
        "state_version",
        str(emb.state_version),
        "event_ts",
        repr(float(emb.event_ts)),
        "computed_at",
        repr(float(emb.computed_at)),
        "last_event_id",
        emb.last_event_id,
    ]
    if emb.recommendations is not None:
        fields += ["recommendations", msgspec.json.encode(emb.recommendations).decode()]
    return _pack.encode(fields), np.asarray(emb.embedding, dtype="<f4").tobytes()


class OnlineStore:
    """The latest embedding per user in Redis (see the module docstring for the layout)."""

    def __init__(self, client: Any, prefix: str = "ripple:user:") -> None:
        self.client = client
        self.prefix = prefix
        self.script = client.register_script(WRITE_SCRIPT)

    @classmethod
    def from_settings(cls, settings: Settings) -> OnlineStore:
        import redis

        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        return cls(client, settings.redis_key_prefix)

    def key(self, user_id: str) -> str:
        return self.prefix + user_id

    def write_many(self, changes: Sequence[tuple[str, UserEmbedding | None]]) -> WriteCounts:
        """Apply ``(user_id, record or None for a tombstone)`` in order, in one round trip."""
        counts = WriteCounts()
        if not changes:
            return counts
        pipe = self.client.pipeline(transaction=False)
        for user_id, emb in changes:
            args = (b"", b"") if emb is None else script_args(emb)
            self.script(keys=[self.key(user_id)], args=args, client=pipe)
        for outcome in pipe.execute():
            if outcome == WRITTEN:
                counts.written += 1
            elif outcome == SKIPPED:
                counts.skipped += 1
            else:
                counts.deleted += 1
        return counts

    def get(self, user_id: str) -> StoredEmbedding | None:
        return self.get_many([user_id]).get(user_id)

    def get_many(self, user_ids: Iterable[str]) -> dict[str, StoredEmbedding]:
        ids = list(user_ids)
        pipe = self.client.pipeline(transaction=False)
        for uid in ids:
            pipe.hgetall(self.key(uid))
        return {uid: decode_hash(uid, h) for uid, h in zip(ids, pipe.execute(), strict=True) if h}

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()


def decode_hash(user_id: str, h: dict[bytes, bytes]) -> StoredEmbedding:
    """A user's hash as Redis returns it (``HGETALL``: bytes to bytes) → :class:`StoredEmbedding`."""
    recs = h.get(b"recommendations")
    return StoredEmbedding(
        user_id=user_id,
        embedding=np.frombuffer(h[b"embedding"], dtype="<f4"),
        model_version=h[b"model_version"].decode(),
        state_version=int(h[b"state_version"]),
        event_ts=float(h[b"event_ts"]),
        computed_at=float(h[b"computed_at"]),
        last_event_id=h[b"last_event_id"].decode(),
        recommendations=json.loads(recs) if recs is not None else None,
    )


def decode_record(key: bytes | None, value: bytes | None) -> tuple[str, UserEmbedding | None] | None:
    """One message of the embeddings topic → ``(user_id, record or None for a tombstone)``; None if unusable.

    >>> from stream_app.core.embedding_format import encode_f32
    >>> emb = UserEmbedding("u1", [0.5, -1.0], "m", 3, "e3", 1.0, 2.0, 2)
    >>> decode_record(b"u1", encode_f32(emb)) == ("u1", emb), decode_record(b"u1", None), decode_record(b"u1", b"{")
    (True, ('u1', None), None)
    """
    if value is None:
        if not key:
            return None
        try:
            return key.decode("utf-8"), None
        except UnicodeDecodeError:
            return None
    try:
        emb = decode_embedding(value)  # either RIPPLE_EMBEDDING_ENCODING (json or f32)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None
    return emb.user_id, emb


@dataclass
class Feed:
    """The consume → write → commit loop of one ``ripple feed`` process (module docstring)."""

    settings: Settings
    store: OnlineStore
    metrics: FeedMetrics
    consumer: Any
    from_beginning: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    paused: bool = False
    """Redis is down: every assigned partition is paused until a write succeeds."""
    rebuilt: set[Any] = field(default_factory=set)
    next_offset: dict[Any, int] = field(default_factory=dict)
    """Per partition: the offset after the last record written to Redis."""
    last_lag: float = 0.0
    redis_up: bool = False
    """The last Redis round trip (write or ping) succeeded: ``/healthz`` answers 200."""

    # ---- the consumer group ---------------------------------------------------------

    def subscribe(self) -> None:
        from kafka import ConsumerRebalanceListener

        feed = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                feed.on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                feed.on_assigned(assigned)

        self.consumer.subscribe([self.settings.output_topic], listener=Listener())

    def on_assigned(self, assigned: Iterable[Any]) -> None:
        assigned = list(assigned)
        if self.from_beginning:
            fresh = [tp for tp in assigned if tp not in self.rebuilt]
            if fresh:
                self.consumer.seek_to_beginning(*fresh)
                self.rebuilt.update(fresh)
        if self.paused and assigned:
            self.consumer.pause(*assigned)  # Redis is still down: fetch nothing for them either
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))

    def on_revoked(self, revoked: Iterable[Any]) -> None:
        for tp in revoked:
            self.next_offset.pop(tp, None)
            try:
                self.metrics.lag.remove(str(tp.partition))
            except KeyError:
                pass

    # ---- the loop -------------------------------------------------------------------

    def run(self) -> None:
        """Until :attr:`stop` is set: :meth:`step`, and report lag every couple of seconds."""
        self.subscribe()
        while not self.stop.is_set():
            handled = self.step()
            now = time.monotonic()
            if now - self.last_lag >= LAG_INTERVAL_S:
                self.last_lag = now
                if not handled:
                    self.check_redis()
                self.report_lag()

    def step(self) -> int:
        """Steps 1-4 of the module docstring for one poll; returns the records it wrote and committed."""
        polled = self.consumer.poll(timeout_ms=int(POLL_TIMEOUT_S * 1000), max_records=self.settings.feed_batch_size)
        records = [record for batch in polled.values() for record in batch]
        if not records:
            return 0
        if not self.write(records):
            return 0  # stopped while Redis was down: nothing committed
        self.commit(records)
        return len(records)

    def write(self, records: list[Any]) -> bool:
        """Write ``records`` to Redis, retrying until it works; False if stopped first (nothing committed then)."""
        changes = self.decode(records)
        delay, down_since = FIRST_RETRY_S, 0.0
        while True:
            started = time.perf_counter()
            try:
                counts = self.store.write_many(changes)
            except Exception as exc:  # redis.ConnectionError, TimeoutError, BusyLoadingError, READONLY, ...
                if not is_redis_error(exc):
                    raise
                self.set_redis_up(False)
                self.metrics.redis_errors.inc()
                if not down_since:
                    down_since = time.monotonic()
                log.warning(E_REDIS_DOWN.format(url=redact(self.settings.redis_url), cause=exc, delay=delay))
                late: list[Any] = []
                if not self.wait(delay, late):
                    return False
                records.extend(late)
                changes.extend(self.decode(late))
                delay = min(delay * 2, self.settings.feed_retry_max_s)
                continue
            now = time.time()
            self.metrics.write_seconds.observe(time.perf_counter() - started)
            self.set_redis_up(True)
            self.metrics.written.inc(counts.written)
            self.metrics.skipped.inc(counts.skipped)
            self.metrics.deleted.inc(counts.deleted)
            for record in records:
                if record.timestamp is not None and record.timestamp >= 0:
                    self.metrics.publish_to_store.observe(max(0.0, now - record.timestamp / 1000))
            if down_since:
                log.warning(I_REDIS_BACK, redact(self.settings.redis_url), time.monotonic() - down_since, len(records))
                self.resume()
            return True

    def decode(self, records: Iterable[Any]) -> list[tuple[str, UserEmbedding | None]]:
        changes = []
        for record in records:
            change = decode_record(record.key, record.value)
            if change is None:
                self.metrics.invalid.inc()
                log.warning(
                    "skipping an undecodable record at %s[%d]@%d", record.topic, record.partition, record.offset
                )
            else:
                changes.append(change)
        return changes

    def set_redis_up(self, up: bool) -> None:
        self.redis_up = up
        self.metrics.redis_up.set(1 if up else 0)

    def wait(self, seconds: float, late: list[Any]) -> bool:
        """Sleep ``seconds`` with the partitions paused, polling so the group keeps them; False if stopped."""
        if not self.paused:
            self.paused = True
            assigned = self.consumer.assignment()
            if assigned:
                self.consumer.pause(*assigned)
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            polled = self.consumer.poll(timeout_ms=max(1, int(min(left, POLL_TIMEOUT_S) * 1000)))
            # Paused partitions return nothing; should a rebalance hand over records anyway, they join the batch.
            late.extend(record for batch in polled.values() for record in batch)
            if time.monotonic() - self.last_lag >= LAG_INTERVAL_S:
                self.last_lag = time.monotonic()
                self.report_lag()
        return False

    def resume(self) -> None:
        self.paused = False
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    def commit(self, records: Sequence[Any]) -> None:
        """Commit the offset after each partition's last written record (partitions still assigned only)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        ends: dict[Any, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            ends[tp] = max(ends.get(tp, 0), record.offset + 1)
        self.next_offset.update(ends)
        assigned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items() if tp in assigned}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            # Already in Redis: a redelivery after this is harmless, and the next commit moves past it.
            log.warning("offset commit failed (%s); the records are in Redis and may be written again", exc)

    def check_redis(self) -> None:
        try:
            self.set_redis_up(self.store.ping())
        except Exception as exc:
            if not is_redis_error(exc):
                raise
            self.set_redis_up(False)

    def report_lag(self) -> None:
        """``ripple_feed_lag{partition}`` = end offset - the offset after the last record written."""
        from kafka.errors import KafkaError

        assigned = list(self.consumer.assignment())
        if not assigned:
            return
        try:
            ends = self.consumer.end_offsets(assigned)
            for tp in assigned:
                done = self.next_offset.get(tp)
                if done is None:
                    done = self.consumer.committed(tp) or 0
                self.metrics.lag.labels(partition=str(tp.partition)).set(max(0, ends[tp] - done))
        except KafkaError as exc:
            log.debug("lag not reported: %s", exc)

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.store.close()


def is_redis_error(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, (redis.RedisError, OSError))


def redact(url: str) -> str:
    """A Redis URL without its password, for logs.

    >>> redact("redis://:secret@cache:6379/0"), redact("redis://127.0.0.1:6379/0")
    ('redis://:***@cache:6379/0', 'redis://127.0.0.1:6379/0')
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    auth, host = rest.rsplit("@", 1)
    user = auth.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def make_consumer(settings: Settings) -> Any:
    """The feed's kafka-python consumer: group ``RIPPLE_FEED_GROUP``, manual commits, from the oldest record."""
    from kafka import KafkaConsumer

    from stream_app.kafka.kafka_connection import client_config

    return KafkaConsumer(
        **client_config(settings),
        group_id=settings.feed_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.feed_batch_size,
        # kafka-python checks CRC32C in pure Python unless the optional crc32c package is installed: two
        # thirds of the feed's time (cProfile, docs/benchmarks.md). TCP checksums the bytes in flight, and
        # the broker validated each batch's CRC when it was produced.
        check_crcs=False,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(min(3.0, settings.session_timeout_s / 3) * 1000),
    )


class FeedServer:
    """``GET /metrics`` (Prometheus) and ``GET /healthz`` (200 while Redis answers) of one feed, in a thread."""

    def __init__(self, feed: Feed, host: str, port: int) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry = feed.metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] == "/metrics":
                    self.answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path.split("?", 1)[0] == "/healthz":
                    up = feed.redis_up
                    body = {
                        "status": "ok" if up else "redis unreachable",
                        "redis_up": up,
                        "partitions": sorted(tp.partition for tp in feed.consumer.assignment()),
                    }
                    self.answer(200 if up else 503, json.dumps(body).encode(), "application/json")
                else:
                    self.answer(404, b'{"error": "not found"}', "application/json")

            def answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="feed-web", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> FeedServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_feed(settings: Settings, from_beginning: bool = False) -> None:
    """``ripple feed`` until SIGINT/SIGTERM: the current batch is finished (or abandoned uncommitted), then it exits."""
    import signal

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = FeedMetrics()
    store = OnlineStore.from_settings(settings)
    feed = Feed(settings, store, metrics, make_consumer(settings), from_beginning=from_beginning)
    feed.check_redis()
    server = FeedServer(feed, settings.web_host, settings.feed_web_port).start()

    def stop(signum: int, frame: object) -> None:
        feed.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        feed.run()
    finally:
        server.stop()
        feed.close()
