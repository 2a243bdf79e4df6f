"""The Faust worker: behaviour events in, user embeddings and dead letters out, graphs in a RocksDB table.

Per micro-batch (``take_events(batch_size, within=batch_within_s)``), in this order:

1. turn the batch's events into :class:`RawRecord` s (raw bytes, key, partition,
   offset, Kafka record timestamp);
2. route every user of the batch to its partition (:meth:`TableStore.routing`) and
   run :meth:`Pipeline.run_async` — the protocol the file runner runs too, with this
   worker as its sink: process;
3. publish one ``UserEmbedding`` per touched user (key ``user_id``) and every dead
   letter (key = the message's own key), and wait until the broker has them (:meth:`StreamWorker.publish`);
4. :meth:`Pipeline.commit` stores the changed graphs in the table (RocksDB + changelog);
5. leaving the batch acks its events; Faust commits their offsets later, after
   flushing the producer.

A stop anywhere before 5 redelivers the batch: already stored users see duplicates
and republish the same ``(user_id, state_version)``, the others are applied again.

Deletion requests (``RIPPLE_DELETION_TOPIC``, key = ``user_id``, value ignored) go to a
second agent: per request the user's graph is deleted (:meth:`Pipeline.forget`) from the
table with the request as Faust's current event (tombstone in the user's changelog
partition) and from the graph cache, then a tombstone (``None`` value) is published on the embeddings topic. The two
agents take turns (one lock), so a request never lands inside an event batch's
process → publish → commit.

With ``RIPPLE_MODEL_PATH`` set, a timer looks for a new checkpoint there every
``RIPPLE_MODEL_POLL_S`` seconds, loads and checks it in a thread and swaps it in under the
same lock, between two micro-batches (``stream_app/kafka/model_swap.py``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import faust
from aiokafka.errors import IllegalStateError
from faust.types import TP, EventT, TopicT

from graph_state import CachedStore
from operators import set_threads
from stream_app.core.embedding_format import embedding_encoder
from stream_app.core.metrics import Metrics
from stream_app.core.pipeline import BatchResult, Pipeline
from stream_app.core.records import DeadLetter, RawRecord, UserEmbedding, json_encoder
from stream_app.core.serving import build_pipeline
from stream_app.core.settings import Settings
from stream_app.kafka import undecodable
from stream_app.kafka.batch_send import send_batched
from stream_app.kafka.compression import compression_type, consumer_codec_warning, install_compression_level
from stream_app.kafka.fetch_flow import RippleTransport
from stream_app.kafka.kafka_connection import faust_credentials
from stream_app.kafka.model_swap import SWAPPED, ModelWatcher, ReloadResult
from stream_app.kafka.offset_guard import OffsetGuard, fetch_range, in_partition_order
from stream_app.kafka.stale_acks import HeldStaleAcks
from stream_app.kafka.table_store import TableStore

TABLE_NAME = "user-graphs"
LAG_INTERVAL_S = 2.0
UNDECODABLE_INTERVAL_S = 1.0
"""How often the worker turns reports of undecodable batches into dead letters (also before every batch)."""
DEGRADED_FOR_S = 900.0
"""``/healthz`` says ``degraded`` for this long after the last undecodable batch."""
DELETION_WITHOUT_KEY = "deletion_without_key"
"""Dead-letter reason of a deletion request whose key is missing, empty or not UTF-8."""
E_DELETION_KEY = "a deletion request needs key = the user_id (UTF-8, not empty); the value is ignored."
log = logging.getLogger("ripple.worker")


@dataclass
class StreamWorker:
    """Everything one worker process holds: the Faust app, its topics and table, the pipeline."""

    settings: Settings
    app: faust.App
    events: TopicT
    embeddings: TopicT
    dead_letters: TopicT
    table: faust.Table
    store: TableStore
    pipeline: Pipeline
    metrics: Metrics
    cache: CachedStore | None = None
    """Decoded graphs of active users in front of the table (``RIPPLE_GRAPH_CACHE_USERS``)."""
    deletions: TopicT | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by each event batch and each batch of deletion requests: they never interleave."""
    generation: int | None = None
    watcher: ModelWatcher | None = None
    """Looks for a new checkpoint at ``RIPPLE_MODEL_PATH`` (``None``: no live swap)."""
    guard: OffsetGuard = field(default_factory=OffsetGuard)
    """Next expected offset per input partition: holes the consumer left are read again."""
    changelog_inflight: list[asyncio.Future] = field(default_factory=list)
    """Changelog record batches of the last batch, not yet acknowledged when it ended."""
    encode: Callable[[UserEmbedding], bytes] = json_encoder.encode
    """Bytes of a published embedding (``RIPPLE_EMBEDDING_ENCODING``, ``stream_app/core/embedding_format.py``)."""
    undecodable_seen: OrderedDict[tuple[str, int, int], float] = field(default_factory=OrderedDict)
    """Undecodable batches already logged and dead-lettered by this process (bounded)."""
    last_undecodable: undecodable.UndecodableBatch | None = None
    last_undecodable_at: float | None = None

    @property
    def changelog_topic(self) -> str:
        return f"{self.settings.app_id}-{TABLE_NAME}-changelog"

    async def process_batch(self, events: Sequence[EventT]) -> BatchResult:
        """Steps 1-4 of the module docstring for one micro-batch."""
        records = [to_record(event) for event in events]
        async with self.lock:
            self.sync_assignment()
            self.check_changelog_sent()
            self.anchor_guard()
            # Events taken before the latest rebalance (a micro-batch in the making) say nothing about
            # holes in this generation: the seek to the committed offset delivers their copies again.
            fresh = (None, self.generation)
            current = [r for r, e in zip(records, events, strict=True) if e.message.generation_id in fresh]
            holes = self.guard.holes(current)
            refetched = await self.refetch_holes(holes)
            records = in_partition_order(records, refetched)
            try:
                with self.store.routing(events, also=refetched):
                    result = await self.pipeline.run_async(records, self)
                # Queued, not awaited: Faust flushes the producer before it commits input offsets.
                self.changelog_inflight = await self.store.flush_changelog()
            except BaseException:
                self.forget_cached()
                self.store.discard_pending()
                raise
            self.guard.advance([*current, *refetched])
            self.release_holes(holes)
        return result

    def check_changelog_sent(self) -> None:
        """Raise the error of a failed changelog send of the previous batch before anything else is stored."""
        inflight, self.changelog_inflight = self.changelog_inflight, []
        for fut in inflight:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                raise RuntimeError(
                    f"a changelog record batch of table {TABLE_NAME} was not accepted by the broker: "
                    f"{fut.exception()!r}; the worker stops so that the batch is redelivered"
                )

    async def refetch_holes(self, holes: Sequence[tuple[int, int, int]]) -> list[RawRecord]:
        """Input offsets the consumer skipped before this batch (see ``stream_app/kafka/offset_guard.py``)."""
        refetched: list[RawRecord] = []
        for partition, start, end in holes:
            refetched += await self.read_again(partition, start, end, "were skipped by the consumer after a rebalance")
        return refetched

    async def read_again(self, partition: int, start: int, end: int, what: str) -> list[RawRecord]:
        """Offsets ``start <= o < end`` of an input partition, read from the broker; logged and counted."""
        got = await fetch_range(self.settings, self.settings.input_topic, partition, start, end)
        if got:  # none: the offsets hold no records (transaction markers, compaction)
            log.warning(
                "input partition %d: offsets %d..%d %s; read %d message(s) again",
                partition, start, end - 1, what, len(got),
            )  # fmt: skip
            self.metrics.refetched.inc(len(got))
        return got

    def held_stale_acks(self) -> HeldStaleAcks | None:
        consumer = getattr(self.app, "_consumer", None)
        return consumer if isinstance(consumer, HeldStaleAcks) else None

    def anchor_guard(self) -> None:
        """Newly assigned partitions expect the offset of this generation's seek (``offset_guard.py``)."""
        consumer = self.held_stale_acks()
        if consumer is None or not consumer.seek_offsets or consumer.seek_generation != self.generation:
            return
        topic = self.settings.input_topic
        self.guard.anchor({tp.partition: o for tp, o in consumer.seek_offsets.items() if tp.topic == topic})

    def release_holes(self, holes: Sequence[tuple[int, int, int]]) -> None:
        """Refetched offsets are processed: committable for Faust, no longer held (``stale_acks.py``)."""
        if (consumer := self.held_stale_acks()) is not None:
            for partition, start, end in holes:
                consumer.release(TP(self.settings.input_topic, partition), start, end)

    def on_partitions_assigned(self, partitions: set[int], generation: int) -> None:
        self.guard.on_assigned(partitions, generation)

    async def process_deletions(self, events: Sequence[EventT]) -> list[str]:
        """Carry out a batch of deletion requests; returns the users deleted (known or not).

        For each user: delete the graph from the table with the request as the current
        event (RocksDB of the user's partition + a changelog tombstone in that partition)
        and from the graph cache, then publish a tombstone on the embeddings topic and
        wait for the broker. Deleting a user without state is not an error: the tombstones
        are sent all the same, so a redelivered request is harmless. A request without a
        usable key is dead-lettered (``deletion_without_key``).
        """
        keyed: list[EventT] = []
        dead: list[DeadLetter] = []
        for event in events:
            if deletion_user(event.message.key) is None:
                dead.append(DeadLetter.of(to_record(event), DELETION_WITHOUT_KEY, E_DELETION_KEY))
            else:
                keyed.append(event)
        users = list(dict.fromkeys(u for e in keyed if (u := deletion_user(e.message.key)) is not None))
        async with self.lock:
            self.sync_assignment()
            try:
                with self.store.routing(keyed):
                    self.pipeline.forget(users)
                self.changelog_inflight = await self.store.flush_changelog()
            except BaseException:
                self.forget_cached()
                self.store.discard_pending()
                raise
            await self.publish_deletions(users, dead)
        if dead:
            self.metrics.dead_letters.labels(reason=DELETION_WITHOUT_KEY).inc(len(dead))
        return users

    async def publish_deletions(self, users: Sequence[str], dead_letters: Sequence[DeadLetter]) -> None:
        """A tombstone (key ``user_id``, value ``None``) per user on the embeddings topic; dead letters."""
        producer = await self.app.maybe_start_producer()
        pending = []
        output = self.settings.output_topic
        for user in users:
            pending.append(await producer.send(output, user.encode("utf-8"), None, None, None, None))
        for dead in dead_letters:
            key = None if dead.key_base64 is None else base64.b64decode(dead.key_base64)
            pending.append(
                await producer.send(self.settings.dead_letter_topic, key, json_encoder.encode(dead), None, None, None)
            )
        if pending:
            await asyncio.gather(*pending)

    async def reload_model(self) -> ReloadResult | None:
        """Swap in a new checkpoint if the file changed (``stream_app/kafka/model_swap.py``).

        Loading and validating run in a thread; the swap itself takes the batch lock, so it
        falls between two micro-batches and never inside one's process → publish → commit.
        """
        if self.watcher is None:
            return None
        result = await asyncio.to_thread(self.watcher.poll, self.pipeline.embedder.model_version)
        if result is None or result.embedder is None:
            return result
        async with self.lock:
            old = self.pipeline.swap_model(result.embedder)
        self.watcher.count(SWAPPED)
        log.info(
            "model swapped: %s -> %s from %s (loaded and checked in %.2f s); every embedding from now on carries %s",
            old, result.detail, self.watcher.path, result.seconds, result.detail,
        )  # fmt: skip
        return result

    def sync_assignment(self) -> None:
        """Once per consumer generation (rebalance): see :meth:`on_assignment_changed`."""
        generation = self.app.consumer_generation_id
        if generation != self.generation:
            self.generation = generation
            self.on_assignment_changed()

    def forget_cached(self) -> None:
        self.pipeline.drop_cached()

    def on_assignment_changed(self) -> None:
        """After a rebalance: partitions may have been updated elsewhere meanwhile; recount the local users."""
        self.forget_cached()
        self.recount_users()

    async def publish(self, result: BatchResult) -> None:
        """Send the batch's embeddings and dead letters, then wait for the broker's acks.

        Values are already bytes, so this goes straight to the app's producer, one record batch
        per partition (``stream_app/kafka/batch_send.py``), skipping Faust's per-message send machinery.
        """
        if not result.embeddings and not result.dead_letters:
            return
        producer = await self.app.maybe_start_producer()
        encode, encode_dead = self.encode, json_encoder.encode
        pending = await send_batched(
            producer,
            self.settings.output_topic,
            [(emb.user_id.encode("utf-8"), encode(emb), None) for emb in result.embeddings],
        )
        if result.dead_letters:
            pending += await send_batched(
                producer,
                self.settings.dead_letter_topic,
                [
                    (None if dead.key_base64 is None else base64.b64decode(dead.key_base64), encode_dead(dead), None)
                    for dead in result.dead_letters
                ],
            )
        await asyncio.gather(*pending)

    async def report_undecodable(self) -> list[undecodable.UndecodableBatch]:
        """What the consumer skipped as undecodable (``stream_app/kafka/undecodable.py``): reported, dead-lettered.

        Every report marks the batch's offsets as done: for Faust's commit (a gap, as Faust
        does for offsets it never sees) and for the offset guard (no refetch). Each batch is
        logged (ERROR, the cause and the fix), counted and dead-lettered once per process;
        returns those.
        """
        fresh = []
        consumer = getattr(self.app, "_consumer", None)
        for batch in undecodable.REPORTS.drain():
            if batch.count and batch.topic in (self.settings.input_topic, self.settings.deletion_topic):
                if consumer is not None:
                    tp = TP(batch.topic, batch.partition)
                    await consumer._add_gap(tp, batch.first_offset, batch.next_offset - 1)
                if batch.topic == self.settings.input_topic:
                    self.guard.skip(batch.partition, batch.first_offset, batch.next_offset)
            if batch.key in self.undecodable_seen:
                continue
            self.undecodable_seen[batch.key] = time.time()
            fresh.append(batch)
        if not fresh:
            return []
        dead = [batch.dead_letter() for batch in fresh if batch.raw]
        try:
            if dead:
                producer = await self.app.maybe_start_producer()
                topic = self.settings.dead_letter_topic
                sent = [await producer.send(topic, None, json_encoder.encode(d), None, None, None) for d in dead]
                await asyncio.gather(*sent)
        except Exception as exc:  # the broker is away: report these batches again on the next call
            log.warning("dead letters of %d undecodable batch(es) not sent yet (%r); retrying", len(dead), exc)
            for batch in fresh:
                del self.undecodable_seen[batch.key]
                undecodable.REPORTS.report(batch)
            return []
        while len(self.undecodable_seen) > 10_000:
            self.undecodable_seen.popitem(last=False)
        for batch in fresh:
            log.error("%s", batch.message())
            self.metrics.undecodable_batches.labels(reason=batch.reason, codec=batch.codec).inc()
            self.metrics.dead_letters.labels(reason=batch.reason).inc(max(1, batch.count))
        self.last_undecodable, self.last_undecodable_at = fresh[-1], time.time()
        return fresh

    def degraded(self, now: float | None = None) -> bool:
        """An undecodable batch was skipped within the last ``DEGRADED_FOR_S`` seconds."""
        now = time.time() if now is None else now
        return self.last_undecodable_at is not None and now - self.last_undecodable_at < DEGRADED_FOR_S

    async def report_lag(self) -> None:
        """Set ``ripple_consumer_lag`` (highwater - position) for each assigned input partition."""
        consumer = self.app.consumer
        lags: dict[int, int] = {}
        positions: dict[int, int] = {}
        for tp in consumer.assignment():
            # A rebalance can revoke partitions while an earlier one's position is awaited:
            # aiokafka then asserts in highwater() and raises in position(), which would crash
            # the worker from this timer (seen in the failover test). A revoked partition's lag
            # is no longer this worker's to report.
            if tp.topic != self.settings.input_topic or tp not in consumer.assignment():
                continue
            highwater = consumer.highwater(tp)
            try:
                position = await consumer.position(tp)
            except IllegalStateError:
                continue
            if position is not None:
                positions[tp.partition] = position
            if highwater is not None and position is not None:
                lags[tp.partition] = max(0, highwater - position)
        self.metrics.consumer_lag.clear()  # partitions revoked since the last report disappear
        for partition, lag in lags.items():
            self.metrics.consumer_lag.labels(partition=str(partition)).set(lag)
        await self.reread_unprocessed(positions)

    async def reread_unprocessed(self, positions: dict[int, int]) -> None:
        """Seek back to input offsets fetched but never processed (a hole at a partition's end, ``offset_guard.py``)."""
        consumer = self.held_stale_acks()
        if consumer is None:
            return
        topic = self.settings.input_topic
        busy = {m.partition for m in list(consumer._unacked_messages) if m.topic == topic}
        async with self.lock:
            if self.app.consumer_generation_id != self.generation:
                return  # a rebalance since the last batch: the next batch brings the guard up to date
            stalled = self.guard.unprocessed(positions, busy, time.monotonic())
            for partition, start, end in stalled:
                why = "were fetched but never processed (no later record showed the hole)"
                if records := await self.read_again(partition, start, end, why):
                    await consumer.seek(TP(topic, partition), records[0].offset)  # through the stream again
                else:
                    self.guard.settle(partition, end)

    def recount_users(self) -> None:
        """Set the users gauge from the local table (after start and rebalances)."""
        self.metrics.users.set(self.store.count())


def to_record(event: EventT) -> RawRecord:
    message = event.message
    value = message.value
    return RawRecord(
        value=value if isinstance(value, bytes) else b"" if value is None else bytes(value),
        key=message.key if isinstance(message.key, bytes) or message.key is None else bytes(message.key),
        source=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp=message.timestamp,
    )


def deletion_user(key: bytes | None) -> str | None:
    """The user a deletion request names: its key as UTF-8 (``None`` when missing, empty or not UTF-8).

    >>> deletion_user(b"u7"), deletion_user(b""), deletion_user(None), deletion_user(b"\\xff")
    ('u7', None, None, None)
    """
    if not key:
        return None
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return None


def leave_group_when_closed(app: faust.App) -> bool:
    """Make the app's consumer leave the group when it closes, as a dynamic member does.

    aiokafka sends no LeaveGroup for a static member (KIP-345: a restart keeps the assignment),
    so a worker stopped for good would hold its partitions until its session expires. A
    graceful stop (``RIPPLE_LEAVE_GROUP_ON_STOP``, the default) forgets the instance id just
    before Faust closes the consumer, and the close sends LeaveGroup with the member id, which
    the broker honours for static members too. A ``kill -9`` skips this: the restarted worker
    rejoins under its instance id without a rebalance. ``False`` when the consumer is not there.
    """
    thread = getattr(getattr(app, "_consumer", None), "_thread", None)
    coordinator = getattr(getattr(thread, "_consumer", None), "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_group_instance_id"):
        return False
    coordinator._group_instance_id = None
    return True


def rocksdb_options(settings: Settings) -> dict[str, int | str]:
    """Faust RocksDB store options: small, explicit (Faust's default block cache is 2 GiB per partition)."""
    return {
        "driver": "rocksdict",
        "block_cache_size": settings.rocksdb_block_cache_mb << 20,
        "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
        "max_write_buffer_number": settings.rocksdb_max_write_buffers,
        "max_open_files": settings.rocksdb_max_open_files,
        "target_file_size_base": 16 << 20,
    }


def advertised_host(web_host: str) -> str:
    """The host other workers reach this one at (``table_route``): the bind address unless it is a wildcard."""
    return socket.gethostname() if web_host in ("0.0.0.0", "::", "") else web_host


def build_app(settings: Settings) -> faust.App:
    os.makedirs(settings.state_dir, exist_ok=True)
    host = advertised_host(settings.web_host)
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=os.path.join(os.path.abspath(settings.state_dir), settings.app_id),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        table_standby_replicas=settings.standby_replicas,
        processing_guarantee=settings.processing_guarantee,
        broker_commit_interval=settings.commit_interval_s,
        # A SIGKILLed worker keeps its partitions until its session expires: this is the failover time.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        # Without linger every embedding and changelog record became its own produce request:
        # a quarter of the worker's time went to socket writes (py-spy, docs/benchmarks.md).
        producer_linger=settings.producer_linger_s,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        producer_compression_type=compression_type(settings),
        # Static membership: a worker restarted within the session timeout (same instance id) gets its
        # partitions back at once, without a rebalance; without it, it waits the session timeout out.
        consumer_group_instance_id=settings.group_instance_id(),
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=host,
        web_port=settings.web_port,
        canonical_url=f"http://{host}:{settings.web_port}",
    )
    install_compression_level(settings.producer_compression_level)
    # Fetches are not held 1.5 s for an idle topic, nor paused a blind second (stream_app/kafka/fetch_flow.py).
    app.transport = RippleTransport(app.conf.broker_consumer, app, fetch_max_wait_s=settings.consumer_fetch_max_wait_s)
    return app


def build_worker(settings: Settings, metrics: Metrics | None = None, app: faust.App | None = None) -> StreamWorker:
    """The app with its topics, table, agent and web views; nothing connects until it starts."""
    from stream_app.kafka.web import add_views

    set_threads(settings.torch_threads)
    settings.tune_gc()
    # Before any consumer exists: a batch that cannot be decoded is skipped and reported, not a crash.
    undecodable.install()
    if warning := consumer_codec_warning():
        log.warning("%s", warning)
    metrics = metrics or Metrics()
    app = app or build_app(settings)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    events = app.topic(settings.input_topic, partitions=settings.partitions, **raw)
    embeddings = app.topic(settings.output_topic, **raw)
    dead_letters = app.topic(settings.dead_letter_topic, **raw)
    # Co-partitioned with the input topic: the worker owning a user's table partition gets its requests.
    deletions = app.topic(settings.deletion_topic, partitions=settings.partitions, **raw)
    table = app.Table(
        TABLE_NAME,
        partitions=settings.partitions,
        help="User behaviour graphs (graph_state codec), one RocksDB per partition.",
        options=rocksdb_options(settings),
        key_type=bytes,  # bytes key and value types make Faust use the raw serializer
        value_type=bytes,
    )
    store = TableStore(table, settings.graph_config(), direct=True, persist_cache_every=settings.persist_cache_every)
    # Before the load: a file replaced between the two is seen as changed by the first poll.
    watcher = ModelWatcher(settings, metrics) if settings.model_path and settings.model_poll_s > 0 else None
    # Kafka events need key = user_id: a key-less one could arrive on another partition than the
    # user's other events and start a second graph there (rejected as missing_key).
    limits = dataclasses.replace(settings.event_limits(), require_key=True)
    pipeline = build_pipeline(settings, store, metrics, limits)
    cache = pipeline.store if isinstance(pipeline.store, CachedStore) else None
    worker = StreamWorker(
        settings, app, events, embeddings, dead_letters, table, store, pipeline, metrics, cache, deletions,
        watcher=watcher, encode=embedding_encoder(settings.embedding_encoding),
    )  # fmt: skip

    @app.agent(events, name="embed-events")
    async def embed_events(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            await worker.report_undecodable()  # skipped offsets are known before the guard looks for holes
            await worker.process_batch(batch)

    @app.agent(deletions, name="delete-users")
    async def delete_users(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            await worker.process_deletions(batch)

    @app.on_partitions_assigned.connect
    async def track_assignment(sender: faust.App, assigned: set, **kwargs: object) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == settings.input_topic}
        worker.on_partitions_assigned(partitions, app.consumer_generation_id)

    @app.timer(LAG_INTERVAL_S)
    async def report_lag() -> None:
        await worker.report_lag()

    @app.timer(UNDECODABLE_INTERVAL_S)
    async def report_undecodable() -> None:
        await worker.report_undecodable()

    if settings.group_instance_id() and settings.leave_group_on_stop:

        @app.on_before_shutdown.connect
        async def leave_group(sender: faust.App, **kwargs: object) -> None:
            leave_group_when_closed(sender)

    if watcher is not None:

        @app.timer(settings.model_poll_s)
        async def reload_model() -> None:
            await worker.reload_model()

    add_views(worker)
    return worker


def run_worker(settings: Settings) -> None:
    """Run the worker until SIGINT/SIGTERM (never parses ``sys.argv``: all options come from ``settings``)."""
    worker = build_worker(settings)
    faust_worker = faust.Worker(worker.app, loglevel=settings.log_level)
    # Faust's startup spinner sets the root logger to DEBUG so that it can spin on every record;
    # every debug() call in aiokafka and Faust then builds a LogRecord (about 6 % of the worker's
    # CPU under py-spy) and event payloads reach the logging machinery. No spinner, no DEBUG.
    faust_worker.spinner = None
    faust_worker.execute_from_commandline()
