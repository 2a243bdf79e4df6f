"""Hostile input at volume through the real worker on the real broker (issue 6).

One module-scoped run: a 4-partition input topic (its ``max.message.bytes`` raised so that
a 10 MB message reaches the worker), a worker at log level INFO, and
``RIPPLE_HOSTILE_MESSAGES`` (default 100,000) messages produced with kafka-python as raw
bytes and keys: good events from ``stream_app.files.generate`` with, between them, bad ones of
every kind the generator can corrupt an event into plus Kafka-level ones (null and empty
values, empty, missing, mismatched, non-UTF-8 and 2 KB keys, random bytes, 70 KB, 900 KB and
10 MB messages, deep nesting, NaN/Infinity literals, far past/future timestamps, huge
weights). The tests check what the run left: the dead-letter topic holds exactly the bad
messages, counted per reason; the good ones produced the file runner's embeddings; the
worker never stopped or crashed; its log at INFO holds no payload; its web server listened
on 127.0.0.1 only.

Runtime with the default volume on the 2-core dev machine: see docs/benchmarks.md
("Soak" section, hostile-input run) — about two minutes.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from bench.worker_process import WorkerProcess, worker_env
from stream_app.core import events as E
from stream_app.core.records import MAX_DEAD_LETTER_RAW_BYTES, DeadLetter, UserEmbedding, dead_letter_decoder
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.generate import BAD_KINDS, GeneratorSpec, corrupt, generate_events
from tests.conftest import write_jsonl
from tests.integration.test_worker import metric

VOLUME = int(os.environ.get("RIPPLE_HOSTILE_MESSAGES", "100000"))
BAD_SHARE = 0.15
MARK = "HOSTILE-PAYLOAD-MARK"
"""In every bad message I build: the worker's log must never show it."""
PARTITIONS = 4

GENERATOR_REASONS = {
    "truncated_json": E.MALFORMED_JSON,
    "missing_user": E.MISSING_FIELD,
    "number_user": E.WRONG_TYPE,
    "nan_ts": E.MALFORMED_JSON,  # JSON has no NaN
    "ancient_ts": E.TIMESTAMP_OUT_OF_RANGE,
    "oversize_item": E.OVERSIZE_FIELD,
    "negative_weight": E.NEGATIVE_WEIGHT,
    "not_object": E.NOT_AN_OBJECT,
    "invalid_utf8": E.INVALID_UTF8,
    "empty_item": E.EMPTY_FIELD,
}


def _enc(ev: dict) -> bytes:
    return msgspec.json.encode(ev)


def _literal(ev: dict, name: str, literal: bytes) -> bytes:
    return _enc({**ev, name: 12345}).replace(f'"{name}":12345'.encode(), f'"{name}":'.encode() + literal)


def own_bad(kind: str, ev: dict, rng: random.Random) -> tuple[bytes | None, bytes | None, str]:
    """(value, key, reason) of one of the Kafka-level or extra kinds, built around a good event."""
    key = ev["user_id"].encode()
    marked = {**ev, "item_id": MARK}
    if kind == "null_value":
        return None, key, E.MALFORMED_JSON  # a tombstone on the input topic
    if kind == "empty_value":
        return b"", key, E.MALFORMED_JSON
    if kind == "random_bytes":
        return b"\xff" + MARK.encode() + rng.randbytes(rng.randrange(1, 200)), key, E.INVALID_UTF8
    if kind == "empty_key":
        return _enc(marked), b"", E.KEY_MISMATCH
    if kind == "missing_key":
        return _enc(marked), None, E.MISSING_KEY
    if kind == "mismatched_key":
        return _enc(marked), b"u-someone-else", E.KEY_MISMATCH
    if kind == "non_utf8_key":
        return _enc(marked), b"\xff\xfe" + key, E.KEY_MISMATCH
    if kind == "huge_key":
        return _enc(marked), b"k" * 2048, E.KEY_MISMATCH
    if kind == "oversize_id":
        return _enc({**marked, "event_id": MARK + "x" * 200}), key, E.OVERSIZE_FIELD
    if kind == "ts_wrong_type":
        return _enc({**marked, "ts": [ev["ts"]]}), key, E.WRONG_TYPE
    if kind == "weight_wrong_type":
        return _enc({**marked, "weight": "heavy"}), key, E.WRONG_TYPE
    if kind == "ts_overflow":
        return _literal(marked, "ts", b"1e400"), key, E.NON_FINITE
    if kind == "ts_bigint":
        return _literal(marked, "ts", b"9" * 400), key, E.NON_FINITE
    if kind == "weight_infinity":
        return _literal(marked, "weight", b"Infinity"), key, E.MALFORMED_JSON
    if kind == "ts_far_future":
        return _enc({**marked, "ts": "2201-01-01T00:00:00Z"}), key, E.TIMESTAMP_OUT_OF_RANGE
    if kind == "ts_far_past":
        return _enc({**marked, "ts": 1000.0}), key, E.TIMESTAMP_OUT_OF_RANGE
    if kind == "ts_not_a_time":
        return _enc({**marked, "ts": "yesterday"}), key, E.BAD_TIMESTAMP
    if kind == "huge_weight":
        return _enc({**marked, "weight": 1e300}), key, E.WEIGHT_OUT_OF_RANGE
    if kind == "features_not_object":
        return _enc({**marked, "features": [1, 2]}), key, E.BAD_FEATURES
    if kind == "deep_nesting":
        nested = b'{"x":' + b"[" * 15_000 + b"]" * 15_000 + b"}"
        return _enc({**marked, "features": {"x": 0}}).replace(b'{"x":0}', nested), key, E.MALFORMED_JSON
    size = {"oversize_70k": 70_000, "oversize_900k": 900_000, "oversize_10m": 10 << 20}[kind]
    return _enc({**marked, "pad": "p" * size}), key, E.OVERSIZE_MESSAGE


OWN_KINDS = (
    "null_value", "empty_value", "random_bytes", "empty_key", "missing_key", "mismatched_key", "non_utf8_key",
    "huge_key", "oversize_id", "ts_wrong_type", "weight_wrong_type", "ts_overflow", "ts_bigint", "weight_infinity",
    "ts_far_future", "ts_far_past", "ts_not_a_time", "huge_weight", "features_not_object",
)  # fmt: skip
RARE_KINDS = {"deep_nesting": 40, "oversize_70k": 40, "oversize_900k": 2, "oversize_10m": 1}
"""Big ones, a fixed number each (bytes on the broker, not variety, is their cost)."""


@dataclass
class Stream:
    messages: list[tuple[bytes | None, bytes | None]]
    reasons: Counter[str]
    good_lines: list[bytes]


def build_stream(total: int, seed: int) -> Stream:
    rng = random.Random(seed)
    n_bad = int(total * BAD_SHARE)
    n_good = total - n_bad
    good_lines = list(generate_events(GeneratorSpec(users=1000, items=5000, events=n_good, seed=seed)))
    kinds = [*(f"gen:{k}" for k in BAD_KINDS), *OWN_KINDS]
    rare = [k for k, n in RARE_KINDS.items() for _ in range(n)]
    bad_kinds = rare + [kinds[i % len(kinds)] for i in range(n_bad - len(rare))]
    rng.shuffle(bad_kinds)
    # Spread the bad messages at random positions between the good ones.
    slots = sorted(rng.sample(range(total), n_bad))
    messages: list[tuple[bytes | None, bytes | None]] = []
    reasons: Counter[str] = Counter()
    good = iter(good_lines)
    bad = iter(zip(slots, bad_kinds, strict=True))
    next_slot, next_kind = next(bad)
    last_event = msgspec.json.decode(good_lines[0])
    for position in range(total):
        if position == next_slot:
            if next_kind.startswith("gen:"):
                kind = next_kind[4:]
                value: bytes | None = corrupt(last_event, kind)
                key: bytes | None = last_event["user_id"].encode()
                reason = GENERATOR_REASONS[kind]
            else:
                value, key, reason = own_bad(next_kind, last_event, rng)
            messages.append((value, key))
            reasons[reason] += 1
            next_slot, next_kind = next(bad, (-1, ""))
        else:
            line = next(good)
            last_event = msgspec.json.decode(line)
            messages.append((line, last_event["user_id"].encode()))
    return Stream(messages, reasons, good_lines)


@dataclass
class Run:
    stream: Stream
    settings: Settings
    expected: dict[str, UserEmbedding]
    latest: dict[str, UserEmbedding]
    dead_letters: list[tuple[bytes | None, DeadLetter]]
    listen_addresses: set[str]
    log: str
    metrics: str
    pids_alive: bool
    exit_code: int
    seconds: dict[str, float]


def create_input_topic(broker: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker, api_version_auto_timeout_ms=5000)
    try:
        config = {"max.message.bytes": str(12 << 20)}  # lets the 10 MB message reach the worker
        admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs=config)])
    finally:
        admin.close()


def listening_on(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                    found.add(address)
    return found


class Follower:
    """Reads a topic from the beginning, keeping only what the test needs (decoded once)."""

    def __init__(self, broker: str, topic: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=broker, group_id=None, enable_auto_commit=False, api_version_auto_timeout_ms=5000,
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
        )  # fmt: skip
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)

    def poll(self) -> list:
        out = []
        for records in self.consumer.poll(timeout_ms=300, max_records=50_000).values():
            out.extend(records)
        return out

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory, broker) -> Run:
    import uuid

    seconds: dict[str, float] = {}
    started = time.monotonic()
    name = "hostile-" + uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("hostile")
    stream = build_stream(VOLUME, seed=6)
    seconds["build stream"] = time.monotonic() - started

    env = worker_env(broker, name, tmp / "state", batch_size=256, log_level="info")
    settings = Settings.from_env(env)
    create_input_topic(broker, settings.input_topic)
    worker = WorkerProcess(env, tmp / "worker.log").start()
    embeddings = dead = None
    try:
        worker.wait_healthy(90)
        assert worker.proc is not None
        pid = worker.proc.pid
        listen = listening_on(int(env["RIPPLE_WEB_PORT"]))
        t = time.monotonic()
        producer = KafkaProducer(
            bootstrap_servers=broker, linger_ms=50, batch_size=1 << 20, max_request_size=16 << 20,
            acks=1,
        )  # fmt: skip
        for value, key in stream.messages:
            producer.send(settings.input_topic, key=key, value=value)
        producer.flush()
        producer.close()
        seconds["produce"] = time.monotonic() - t

        t = time.monotonic()
        good_path = write_jsonl(tmp / "good.jsonl", stream.good_lines)
        replay(good_path, "jsonl", str(tmp / "file.out"), Settings.from_env({}, state_dir=str(tmp / "file-state")))
        expected: dict[str, UserEmbedding] = {}
        with open(tmp / "file.out", "rb") as f:
            for line in f:
                emb = msgspec.json.decode(line, type=UserEmbedding)
                expected[emb.user_id] = emb  # the file's last line per user is its latest state
        seconds["file runner"] = time.monotonic() - t

        embeddings = Follower(broker, settings.output_topic)
        dead = Follower(broker, settings.dead_letter_topic)
        latest: dict[str, UserEmbedding] = {}
        letters: list[tuple[bytes | None, DeadLetter]] = []
        n_bad = sum(stream.reasons.values())
        deadline = time.monotonic() + max(240.0, VOLUME / 250)

        def done() -> bool:
            return len(letters) >= n_bad and all(
                u in latest and latest[u].state_version >= e.state_version for u, e in expected.items()
            )

        while not done():
            assert time.monotonic() < deadline, f"timed out: {len(letters)}/{n_bad} dead letters\n{worker.log()}"
            assert worker.proc.poll() is None, f"the worker stopped:\n{worker.log()}"
            for message in embeddings.poll():
                emb = msgspec.json.decode(message.value, type=UserEmbedding)
                prev = latest.get(emb.user_id)
                if prev is None or emb.state_version >= prev.state_version:
                    latest[emb.user_id] = emb
            letters += [(m.key, dead_letter_decoder.decode(m.value)) for m in dead.poll()]
        seconds["until all out"] = time.monotonic() - started
        time.sleep(1.0)  # anything extra (a wrong duplicate dead letter) would show up now
        letters += [(m.key, dead_letter_decoder.decode(m.value)) for m in dead.poll()]
        _, body = worker.get("/metrics")
        alive = worker.proc.poll() is None and worker.proc.pid == pid
    finally:
        code = worker.stop()
        for follower in (embeddings, dead):
            if follower is not None:
                follower.close()
    seconds["total"] = time.monotonic() - started
    print("hostile input run, seconds:", {k: round(v, 1) for k, v in seconds.items()})
    return Run(
        stream=stream, settings=settings, expected=expected, latest=latest, dead_letters=letters,
        listen_addresses=listen, log=Path(tmp / "worker.log").read_text(errors="replace"), metrics=body.decode(),
        pids_alive=alive, exit_code=code, seconds=seconds,
    )  # fmt: skip


def test_every_bad_message_lands_on_the_dead_letter_topic_with_its_reason(run):
    got = Counter(letter.reason for _, letter in run.dead_letters)
    assert got == run.stream.reasons
    assert set(got) <= set(E.REJECTION_REASONS)
    assert len(got) >= 14  # the variety really went through
    for reason, count in run.stream.reasons.items():  # the worker's counters agree
        assert metric(run.metrics, "ripple_dead_letters_total", reason=reason) == count, reason
    for _, letter in run.dead_letters:
        assert letter.source == run.settings.input_topic and 0 <= letter.partition < PARTITIONS
        assert letter.offset >= 0 and letter.detail


def test_huge_messages_are_dead_lettered_as_a_prefix_that_fits_kafka(run):
    huge = [(key, d) for key, d in run.dead_letters if d.raw_size >= 900_000]
    assert sorted(d.raw_size for _, d in huge) == sorted(
        len(v) for v, _ in run.stream.messages if v is not None and len(v) >= 900_000
    )
    for _, letter in huge:
        assert letter.reason == E.OVERSIZE_MESSAGE and letter.truncated
        assert len(letter.raw()) == MAX_DEAD_LETTER_RAW_BYTES and letter.raw().startswith(b'{"event_id"')
    long_keys = [(k, d) for k, d in run.dead_letters if d.key_base64 and len(d.key_base64) > 1000]
    assert len(long_keys) == sum(1 for _, k in run.stream.messages if k is not None and len(k) > 1024)
    for key, letter in long_keys:  # 2 KB keys: the dead letter's own Kafka key is the prefix too
        assert key == b"k" * 1024 and letter.truncated and letter.reason == E.KEY_MISMATCH


def test_every_good_message_is_processed_like_the_file_runner(run):
    assert run.latest.keys() == run.expected.keys()
    for uid, want in run.expected.items():
        got = run.latest[uid]
        assert (got.state_version, got.last_event_id) == (want.state_version, want.last_event_id), uid
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5)
    applied = metric(run.metrics, "ripple_events_processed_total", outcome="applied")
    assert applied == len(run.stream.good_lines) == sum(e.state_version for e in run.expected.values())


def test_the_worker_never_stopped(run):
    assert run.pids_alive and run.exit_code == 0
    assert "Traceback" not in run.log and "crashed" not in run.log.lower(), run.log[-4000:]


def test_no_event_payload_in_the_log_at_info(run):
    log = run.log
    assert "[INFO]" in log or " INFO " in log or "INFO" in log  # it really logged at INFO
    assert MARK not in log
    for needle in ('"event_id"', '"item_id"', "raw_base64", "raw_size"):
        assert needle not in log, needle
    # no generated event id (e6-123) and no item id of the stream (i123)
    assert not re.search(r"\be6-\d+\b", log)
    assert not re.search(r"\bi\d{1,4}\b", log)


def test_web_server_listens_on_loopback_only(run):
    assert run.settings.web_host == "127.0.0.1"  # the default: worker_env does not set it
    assert run.listen_addresses == {"0100007F"}, run.listen_addresses  # 127.0.0.1, not 0.0.0.0 or ::
