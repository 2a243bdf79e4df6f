"""One settings object for every entry point, built from ``RIPPLE_*`` environment variables."""

from __future__ import annotations

import gc
import hashlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, get_type_hints

from graph_state import DEFAULT_ACTION_WEIGHTS, DEFAULT_ACTIONS, GraphConfig, RocksOptions
from stream_app.core.events import EventLimits

if TYPE_CHECKING:
    from operators import IncrementalPolicy

ENV_PREFIX = "RIPPLE_"
E_BAD_ENV = "environment variable {name}={value!r} is not a valid {kind}: {cause}. Fix or unset it."
E_INVALID = "invalid setting {name}={value!r}: {why}"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")
EMBEDDING_ENCODINGS = ("json", "f32")
INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,249}")
"""What Kafka accepts as a ``group.instance.id``."""


def _doc(text: str, default: Any, repr: bool = True) -> Any:
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata={"doc": text}, repr=repr)
    return field(default=default, metadata={"doc": text}, repr=repr)


@dataclass(frozen=True)
class Settings:
    """Every knob of Ripple. Each field ``x`` is read from ``RIPPLE_X``.

    >>> Settings.from_env({"RIPPLE_BATCH_SIZE": "64", "RIPPLE_MAX_NODES": "200"}).batch_size
    64
    """

    # Kafka and Faust
    broker: str = _doc(
        "Kafka bootstrap servers, Faust style (kafka://host:port[;host:port]).", "kafka://127.0.0.1:9092"
    )
    app_id: str = _doc("Faust application id (consumer group, changelog topic prefix).", "ripple")
    input_topic: str = _doc("Topic of behaviour events (JSON, key = user_id).", "ripple-events")
    output_topic: str = _doc("Topic the user embeddings are published to (key = user_id).", "ripple-embeddings")
    dead_letter_topic: str = _doc("Topic for rejected messages with their reason.", "ripple-dead-letter")
    deletion_topic: str = _doc("Topic of user deletion requests (key = user_id).", "ripple-deletions")
    partitions: int = _doc("Partitions of the input topic and the state table.", 4)
    replication_factor: int = _doc("Replication factor of topics Ripple creates.", 1)
    standby_replicas: int = _doc("Faust standby replicas per table partition.", 0)
    processing_guarantee: str = _doc("Faust processing guarantee: at_least_once or exactly_once.", "at_least_once")
    commit_interval_s: float = _doc("How often the worker commits consumer offsets, in seconds.", 2.8)
    session_timeout_s: float = _doc(
        "Kafka consumer-group session timeout, seconds: how long a killed worker keeps its partitions "
        "before the group moves them (the broker allows 6-1800 by default).",
        60.0,
    )
    kafka_security_protocol: str = _doc("PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.", "PLAINTEXT")
    kafka_sasl_mechanism: str = _doc("SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) when SASL is used.", "")
    kafka_sasl_username: str = _doc("SASL user name.", "")
    kafka_sasl_password: str = _doc("SASL password.", "", repr=False)
    kafka_ssl_cafile: str = _doc("CA bundle for SSL.", "")
    kafka_ssl_certfile: str = _doc("Client certificate for SSL.", "")
    kafka_ssl_keyfile: str = _doc("Client key for SSL.", "")
    producer_linger_s: float = _doc(
        "How long the worker's Kafka producer waits for more records before it sends a partly filled batch "
        "(seconds): Faust's own sends. The micro-batch's embeddings and changelog records go out at once, as "
        "closed batches.",
        0.005,
    )
    producer_max_batch_bytes: int = _doc("Largest Kafka producer batch per partition, bytes.", 1 << 20)
    consumer_fetch_max_wait_s: float = _doc(
        "Longest time the broker holds the worker's fetch request when the partitions in it have no new "
        "records (Faust fixes 1.5 s; while one is held, no other fetch goes to that broker). 0.05 took p99 at "
        "half the sustained rate from 1.7 s to 235 ms; an idle worker then sends ~20 empty fetches a second.",
        0.05,
    )
    producer_compression: str = _doc(
        "Compression of everything the worker and `ripple produce` send: none, gzip, snappy, lz4 or zstd.", "zstd"
    )
    producer_compression_level: int = _doc(
        "Level of the worker's gzip, lz4 or zstd compression, 1 (fastest) to 9; 0 keeps aiokafka's own "
        "(zstd 3, lz4 9, gzip 9). At 1, zstd compressed embedding batches as well at 2.4x less CPU and lz4 "
        "at 7x less (docs/benchmarks.md).",
        1,
    )
    static_membership: bool = _doc(
        "Join the consumer group as a static member (group.instance.id = the instance id): a worker restarted "
        "within the session timeout gets its partitions back without a rebalance.",
        True,
    )
    leave_group_on_stop: bool = _doc(
        "A static member stopped gracefully (SIGTERM, Ctrl-C) leaves the group at once, so its partitions move "
        "without waiting for the session timeout; false keeps them through a quick restart (rolling updates "
        "without rebalances) but holds them for the session timeout when it does not come back.",
        True,
    )
    instance_id: str = _doc(
        "The worker's stable identity in the group (static membership); empty = host name + a digest of the "
        "state directory. Unique per worker; the Kubernetes manifests set the pod name.",
        "",
    )
    # Micro-batching
    batch_size: int = _doc("Most events per micro-batch.", 256)
    batch_within_s: float = _doc("Longest wait for a micro-batch to fill, in seconds.", 0.05)
    # State
    state_dir: str = _doc("Directory of RocksDB state (Faust tables / embedded runner).", "./ripple-state")
    rocksdb_block_cache_mb: int = _doc("RocksDB block cache per database, MiB.", 16)
    rocksdb_write_buffer_mb: int = _doc("RocksDB write buffer (memtable) size, MiB.", 8)
    rocksdb_max_write_buffers: int = _doc("RocksDB memtables kept per database.", 2)
    rocksdb_max_open_files: int = _doc("RocksDB open file limit per database.", 256)
    rocksdb_compression: str = _doc("Block compression of RocksDB's files: none, snappy, lz4 or zstd.", "lz4")
    rocksdb_wal: bool = _doc(
        "Write RocksDB's write-ahead log for the file runner's state. Off: a crash rolls state and "
        "progress back together to the last memtable flush and a resumed run re-reads those events "
        "(at-least-once output either way); on: every batch is written twice.",
        False,
    )
    rocksdb_sync_writes: bool = _doc(
        "fsync RocksDB's write-ahead log on every batch (needs RIPPLE_ROCKSDB_WAL).", False
    )
    rocksdb_snapshot_every: int = _doc(
        "The embedded store writes a large user graph's full record (256 nodes or more) at most every this "
        "many of its events and, in between, only the events since (a tail that reads replay); 0 or 1 = "
        "always the full record.",
        32,
    )
    graph_cache_users: int = _doc(
        "Most decoded user graphs kept in memory (write-through LRU, also bounded by RIPPLE_GRAPH_CACHE_MB); "
        "0 disables the cache.",
        1_000_000,
    )
    graph_cache_mb: int = _doc(
        "Most memory the decoded-graph cache holds, in MiB, by each graph's measured footprint (a 10-node "
        "graph ~7 KB, a 1,000-node one with its layer cache over 1 MB); 0 = no byte limit.",
        256,
    )
    persist_cache_every: int = _doc(
        "Store a graph's per-node layer cache with it at state versions that are multiples of this "
        "(0 = never: the cache lives in memory only). A stored cache lets a graph read back at exactly "
        "that version resume incrementally; it is 3x a large graph's record (docs/benchmarks.md).",
        0,
    )
    # Graph
    max_nodes: int = _doc("Distinct items kept in a user's window.", 50)
    decay_seconds: float = _doc("Time constant of the transition-weight decay by gap between behaviours.", 3600.0)
    dedupe_ring: int = _doc("Recent event ids remembered per user for idempotent replay.", 256)
    max_lateness_s: float = _doc(
        "Dead-letter events older than the user's previous event by more than this (seconds; inf = accept all).",
        float("inf"),
    )
    actions: tuple[str, ...] = _doc("Comma-separated action vocabulary (must include 'other').", DEFAULT_ACTIONS)
    action_weights: dict[str, float] = _doc(
        "Comma-separated action=weight pairs for transition edges.", lambda: dict(DEFAULT_ACTION_WEIGHTS)
    )
    unknown_action: str = _doc("'map' unknown actions to 'other' (counted) or 'reject' them.", "map")
    # Input limits
    max_message_bytes: int = _doc("Largest accepted message; larger ones are dead-lettered before parsing.", 65536)
    min_ts: float = _doc("Earliest accepted event time (epoch seconds).", 31_536_000.0)
    max_ts: float = _doc("Latest accepted event time (epoch seconds).", 4_102_444_800.0)
    max_weight: float = _doc("Largest accepted event weight (larger ones would overflow edge weights).", 1e6)
    # Model
    model_path: str = _doc("Model checkpoint; empty = the seeded default model.", "")
    model_seed: int = _doc("Seed of the default model when no checkpoint is given.", 0)
    model_poll_s: float = _doc(
        "How often the worker looks for a new checkpoint at model_path and swaps it in live (seconds; 0 = never).",
        10.0,
    )
    head_path: str = _doc(
        "Label head (ripple train-head) whose score is published beside each embedding; empty = none.", ""
    )
    explain_top: int = _doc(
        "Put the top N behaviours' shares of each published vector in its record (0 = off; one more forward per user).",
        0,
    )
    incremental: bool = _doc("Recompute only the L-hop neighbourhood of changed nodes when a cache allows.", True)
    incremental_min_nodes: int = _doc(
        "Graphs this large are recomputed incrementally when they can (measured rule).", 64
    )
    incremental_batched_min_nodes: int = _doc(
        "Graphs from this size up to RIPPLE_INCREMENTAL_MIN_NODES are recomputed incrementally only when "
        "RIPPLE_INCREMENTAL_BATCHED_MIN_GRAPHS of them share a micro-batch; smaller ones always fully (measured rule).",
        32,
    )
    incremental_batched_min_graphs: int = _doc(
        "How many graphs between the two sizes a micro-batch needs for their incremental recompute to pay.", 32
    )
    incremental_full_share: float = _doc("Recompute fully when the affected share of a graph exceeds this.", 0.5)
    torch_threads: int = _doc("Torch threads for inference (1 is fastest for micro-batches; 0 = torch default).", 1)
    forward_process: str = _doc(
        "The file runner's batched GCN forward in a second process, beside the per-event work: auto (when the "
        "process may use 2 whole CPUs or more, by its affinity and cgroup quota, and the file holds 8 micro-batches "
        "or more), on, or off. Vectors are the same bits either way; the incremental engine's part stays in the "
        "runner, the process also makes JSON-lines output, and runs with explanations or recommendations compute "
        "in one process (docs/architecture.md).",
        "auto",
    )
    gc_threshold: int = _doc(
        "Allocations between two young-generation passes of Python's garbage collector (Python's default: 700). "
        "With thousands of cached user graphs alive every pass is long; 50,000 made the file runner 20-40 % "
        "faster (docs/benchmarks.md). 0 keeps Python's default.",
        50_000,
    )
    # Recommendations and the online store (ripple feed)
    recommend_top: int = _doc(
        "Put the top K items for each published vector in its record (0 = off; needs a trained model).", 0
    )
    recommend_exclude_seen: bool = _doc(
        "Leave the items of the user's window out of RIPPLE_RECOMMEND_TOP recommendations.", False
    )
    redis_url: str = _doc(
        "Redis the feed writes the latest embedding per user to (redis://, rediss:// or unix://).",
        "redis://127.0.0.1:6379/0",
        repr=False,  # may hold a password
    )
    redis_key_prefix: str = _doc(
        "Prefix of the feed's Redis keys (one hash per user: prefix + user_id).", "ripple:user:"
    )
    redis_timeout_s: float = _doc("Redis connect and socket timeout of the feed, seconds.", 5.0)
    feed_group: str = _doc("Consumer group of `ripple feed` (one group per online store).", "ripple-feed")
    feed_batch_size: int = _doc("Most embeddings the feed writes to Redis per round trip.", 1000)
    feed_retry_max_s: float = _doc("Longest wait between two tries while Redis is unreachable, seconds.", 10.0)
    feed_web_port: int = _doc("Port of the feed's /metrics and /healthz (on RIPPLE_WEB_HOST).", 6068)
    # Output
    embedding_encoding: str = _doc(
        "How the embedding vector is written: json (a list of numbers) or f32 (base64 of little-endian float32, "
        "~36 % of the json record at 64 dimensions).",
        "json",
    )
    # Web
    web_host: str = _doc("Address the web server (views, /metrics) binds to.", "127.0.0.1")
    web_port: int = _doc("Port of the web server.", 6066)
    log_level: str = _doc("Log level of the worker.", "info")

    def __post_init__(self) -> None:
        checks = [
            ("partitions", self.partitions >= 1, "must be at least 1"),
            ("batch_size", 1 <= self.batch_size <= 100_000, "must be between 1 and 100000"),
            ("batch_within_s", 0 < self.batch_within_s <= 60, "must be in (0, 60] seconds"),
            ("producer_compression_level", 0 <= self.producer_compression_level <= 9, "must be between 0 and 9"),
            ("consumer_fetch_max_wait_s", 0 < self.consumer_fetch_max_wait_s <= 30, "must be in (0, 30] seconds"),
            ("commit_interval_s", 0 < self.commit_interval_s <= 600, "must be in (0, 600] seconds"),
            ("session_timeout_s", 1 <= self.session_timeout_s <= 1800, "must be in [1, 1800] seconds"),
            ("unknown_action", self.unknown_action in ("map", "reject"), "must be 'map' or 'reject'"),
            (
                "processing_guarantee",
                self.processing_guarantee in ("at_least_once", "exactly_once"),
                "must be at_least_once or exactly_once",
            ),
            ("max_message_bytes", 256 <= self.max_message_bytes <= 16 << 20, "must be between 256 B and 16 MiB"),
            ("web_port", 0 <= self.web_port <= 65535, "must be a TCP port"),
            ("rocksdb_snapshot_every", self.rocksdb_snapshot_every >= 0, "must be 0 or a number of events"),
            ("graph_cache_users", self.graph_cache_users >= 0, "must be 0 (no cache) or a number of users"),
            ("graph_cache_mb", self.graph_cache_mb >= 0, "must be 0 (no byte limit) or a number of MiB"),
            (
                "persist_cache_every",
                self.persist_cache_every >= 0,
                "must be 0 (never) or a positive number of versions",
            ),
            ("min_ts", self.min_ts < self.max_ts, "must be below max_ts"),
            ("incremental_min_nodes", self.incremental_min_nodes >= 0, "must be 0 or a number of nodes"),
            (
                "incremental_batched_min_nodes",
                self.incremental_batched_min_nodes >= 0,
                "must be 0 or a number of nodes",
            ),
            (
                "incremental_batched_min_graphs",
                self.incremental_batched_min_graphs >= 0,
                "must be 0 or a number of graphs",
            ),
            (
                "kafka_security_protocol",
                self.kafka_security_protocol in SECURITY_PROTOCOLS,
                "must be one of " + ", ".join(SECURITY_PROTOCOLS),
            ),
            (
                "kafka_sasl_mechanism",
                self.kafka_sasl_mechanism in ("", *SASL_MECHANISMS),
                "must be empty (PLAIN when SASL is used) or one of " + ", ".join(SASL_MECHANISMS),
            ),
            ("max_weight", 0 < self.max_weight <= 1e12, "must be in (0, 1e12]"),
            ("model_poll_s", 0 <= self.model_poll_s <= 86400, "must be in [0, 86400] seconds (0 = never)"),
            ("explain_top", 0 <= self.explain_top <= 1000, "must be between 0 (off) and 1000"),
            ("forward_process", self.forward_process in ("auto", "on", "off"), "must be auto, on or off"),
            ("recommend_top", 0 <= self.recommend_top <= 1000, "must be between 0 (off) and 1000"),
            (
                "redis_url",
                self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                "must start with redis://, rediss:// or unix://",
            ),
            ("redis_timeout_s", 0 < self.redis_timeout_s <= 600, "must be in (0, 600] seconds"),
            ("feed_batch_size", 1 <= self.feed_batch_size <= 100_000, "must be between 1 and 100000"),
            ("feed_retry_max_s", 0 < self.feed_retry_max_s <= 3600, "must be in (0, 3600] seconds"),
            ("feed_web_port", 0 <= self.feed_web_port <= 65535, "must be a TCP port"),
            (
                "producer_compression",
                self.producer_compression in COMPRESSION_TYPES,
                "must be one of " + ", ".join(COMPRESSION_TYPES),
            ),
            (
                "embedding_encoding",
                self.embedding_encoding in EMBEDDING_ENCODINGS,
                "must be one of " + ", ".join(EMBEDDING_ENCODINGS),
            ),
            (
                "instance_id",
                not self.instance_id or INSTANCE_ID.fullmatch(self.instance_id) is not None,
                "must be 1-249 characters of letters, digits, '.', '_' and '-' (or empty: derived)",
            ),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(E_INVALID.format(name=name, value=getattr(self, name), why=why))
        self.graph_config()  # validates window, actions, decay and ring with their own messages

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``RIPPLE_*`` variables, then explicit overrides (e.g. CLI flags)."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in environ:
                values[f.name] = _parse(name, environ[name], hints[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, doc) for every setting."""
        rows = []
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if isinstance(default, tuple):
                default = ",".join(default)
            elif isinstance(default, dict):
                default = ",".join(f"{k}={v}" for k, v in default.items())
            rows.append((ENV_PREFIX + f.name.upper(), str(default), f.metadata["doc"]))
        return rows

    def group_instance_id(self) -> str | None:
        """``group.instance.id`` of the worker's consumer (``None``: dynamic membership).

        ``RIPPLE_INSTANCE_ID`` when set; otherwise the host name and a digest of the absolute
        state directory, so that a worker restarted on the same host and state keeps its identity
        and two workers on one host (different state directories) never share one.
        """
        if not self.static_membership:
            return None
        if self.instance_id:
            return self.instance_id
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:200] or "host"
        digest = hashlib.sha256(os.path.abspath(self.state_dir).encode()).hexdigest()[:10]
        return f"{host}-{digest}"

    def graph_config(self) -> GraphConfig:
        return GraphConfig(
            max_nodes=self.max_nodes,
            actions=self.actions,
            action_weights=self.action_weights,
            decay_seconds=self.decay_seconds,
            dedupe_ring=self.dedupe_ring,
            max_lateness_s=self.max_lateness_s,
        )

    def event_limits(self) -> EventLimits:
        return EventLimits(
            max_message_bytes=self.max_message_bytes,
            min_ts=self.min_ts,
            max_ts=self.max_ts,
            max_weight=self.max_weight,
            actions=self.actions,
            unknown_action=self.unknown_action,
        )

    def incremental_policy(self) -> IncrementalPolicy:
        from operators import IncrementalPolicy  # torch: only where something embeds

        return IncrementalPolicy(
            enabled=self.incremental,
            full_share=self.incremental_full_share,
            min_nodes=self.incremental_min_nodes,
            batched_min_nodes=self.incremental_batched_min_nodes,
            batched_min_graphs=self.incremental_batched_min_graphs,
        )

    def tune_gc(self) -> None:
        """Apply ``gc_threshold`` to this process (runners call it once, at start)."""
        if self.gc_threshold > 0:
            gc.set_threshold(self.gc_threshold, 20, 100)

    def rocks_options(self) -> RocksOptions:
        return RocksOptions(
            block_cache_mb=self.rocksdb_block_cache_mb,
            write_buffer_mb=self.rocksdb_write_buffer_mb,
            max_write_buffers=self.rocksdb_max_write_buffers,
            max_open_files=self.rocksdb_max_open_files,
            compression=self.rocksdb_compression,
            wal=self.rocksdb_wal,
            sync_writes=self.rocksdb_sync_writes,
            persist_cache_every=self.persist_cache_every,
            snapshot_every=self.rocksdb_snapshot_every,
        )


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError("expected true/false")
            return raw.lower() in ("1", "true", "yes")
        if kind == tuple[str, ...]:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if kind == dict[str, float]:
            pairs = (part.split("=", 1) for part in raw.split(",") if part.strip())
            return {k.strip(): float(v) for k, v in pairs}
        return raw
    except ValueError as exc:
        raise ValueError(
            E_BAD_ENV.format(name=name, value=raw, kind=getattr(kind, "__name__", kind), cause=exc)
        ) from exc
