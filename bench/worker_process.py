"""Runs the real worker (`python -m stream_app worker`) as a subprocess against a real broker: tests and benches."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

from kafka import KafkaConsumer, TopicPartition

from stream_app.core.embedding_format import decode_embedding
from stream_app.core.records import UserEmbedding

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(broker: str, name: str, state_dir: Path, **extra: object) -> dict[str, str]:
    """RIPPLE_* variables of one isolated worker: its own topics, app id (group) and state."""
    env = {
        "RIPPLE_BROKER": f"kafka://{broker}",
        "RIPPLE_APP_ID": f"app-{name}",
        "RIPPLE_INPUT_TOPIC": f"events-{name}",
        "RIPPLE_OUTPUT_TOPIC": f"embeddings-{name}",
        "RIPPLE_DEAD_LETTER_TOPIC": f"dlq-{name}",
        "RIPPLE_DELETION_TOPIC": f"deletions-{name}",
        "RIPPLE_STATE_DIR": str(state_dir),
        "RIPPLE_PARTITIONS": "4",
        "RIPPLE_BATCH_SIZE": "64",
        "RIPPLE_BATCH_WITHIN_S": "0.05",
        "RIPPLE_COMMIT_INTERVAL_S": "0.5",
        "RIPPLE_WEB_PORT": str(free_port()),
        "RIPPLE_LOG_LEVEL": "warning",
    }
    env.update({f"RIPPLE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@dataclass
class WorkerProcess:
    """One `python -m stream_app worker` subprocess with its log file."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['RIPPLE_WEB_PORT']}"

    command: ClassVar[str] = "worker"
    """The ``ripple`` command this process runs (``python -m stream_app <command>``)."""

    def start(self) -> Self:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", self.command],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_healthy(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            status, body = self.get("/healthz")
            if status == 200:
                return json.loads(body)
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy after {timeout}s:\n{self.log()}")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful: Faust leaves the group and commits), SIGKILL if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class TopicReader:
    """Reads a whole topic from the beginning, keeping every message (partition, offset, key, value)."""

    broker: str
    topic: str
    messages: list = field(default_factory=list)
    consumer: KafkaConsumer | None = None

    def _ensure(self) -> KafkaConsumer:
        if self.consumer is None:
            consumer = KafkaConsumer(
                bootstrap_servers=self.broker, group_id=None, enable_auto_commit=False, api_version_auto_timeout_ms=5000
            )
            deadline = time.monotonic() + 15
            parts = None
            while not parts and time.monotonic() < deadline:
                parts = consumer.partitions_for_topic(self.topic)
                if not parts:
                    time.sleep(0.2)
            assert parts, f"topic {self.topic} does not exist"
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            self.consumer = consumer
        return self.consumer

    def poll(self, seconds: float = 0.3) -> None:
        for records in self._ensure().poll(timeout_ms=int(seconds * 1000)).values():
            self.messages.extend(records)

    def until(self, done: Callable[[TopicReader], bool], timeout: float, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            if time.monotonic() > deadline:
                explain = getattr(done, "explain", None)
                detail = f": {explain(self)}" if explain is not None else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what or self.topic}{detail}")
            self.poll()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def embeddings(self) -> list[UserEmbedding]:
        """The embeddings read so far, either encoding (tombstones of deleted users, value ``None``, left out)."""
        return [decode_embedding(m.value) for m in self.messages if m.value is not None]


def latest_by_user(embeddings: list[UserEmbedding]) -> dict[str, UserEmbedding]:
    latest: dict[str, UserEmbedding] = {}
    for emb in embeddings:
        prev = latest.get(emb.user_id)
        if prev is None or emb.state_version >= prev.state_version:
            latest[emb.user_id] = emb
    return latest


def reached(expected: dict[str, UserEmbedding]) -> Callable[[TopicReader], bool]:
    """True once every expected user has been published at (at least) its expected state_version."""

    def behind(reader: TopicReader) -> dict[str, tuple[int | None, int]]:
        latest = latest_by_user(reader.embeddings())
        return {
            uid: (latest[uid].state_version if uid in latest else None, e.state_version)
            for uid, e in expected.items()
            if uid not in latest or latest[uid].state_version < e.state_version
        }

    def check(reader: TopicReader) -> bool:
        return not behind(reader)

    def explain(reader: TopicReader) -> str:
        """Which users are behind: ``user (published state_version / expected, partition of its key)``."""
        keys = {m.key.decode(): m.partition for m in reader.messages if m.key is not None}
        late = behind(reader)
        return f"{len(late)} user(s) behind: " + ", ".join(
            f"{uid} ({got}/{want}, partition {keys.get(uid)})" for uid, (got, want) in sorted(late.items())
        )

    check.explain = explain  # type: ignore[attr-defined]
    return check


# ---- crash and failover helpers (test_worker_crash.py, test_worker_failover.py) ----


def sigkill(worker: WorkerProcess, timeout: float = 30.0) -> int:
    """``kill -9``: no shutdown code runs (no offset commit, no producer flush, no leaving the group)."""
    assert worker.proc is not None
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGKILL)
    return worker.proc.wait(timeout)


class BackgroundProducer:
    """Produces a JSON-lines file to the input topic (key = ``user_id``, file order) from a thread.

    It sends ``rate`` events per second until :meth:`hurry` is called, then the rest at once:
    the stream keeps arriving while workers are killed and restarted, however long that takes.
    """

    def __init__(self, events_path: str, settings: object, rate: float) -> None:
        import threading

        from stream_app.core.settings import Settings

        assert isinstance(settings, Settings)
        with open(events_path, "rb") as f:
            self.lines = [line.rstrip(b"\n") for line in f if line.strip()]
        self.settings = settings
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None
        self._hurry = threading.Event()
        self.thread = threading.Thread(target=self._run, name="background-producer", daemon=True)

    def _run(self) -> None:
        from kafka import KafkaProducer

        from stream_app.core.keys import message_key
        from stream_app.kafka.kafka_connection import client_config, ensure_topics

        try:
            ensure_topics(self.settings)
            producer = KafkaProducer(**client_config(self.settings), linger_ms=5, acks="all", enable_idempotence=True)
            try:
                started = time.monotonic()
                for n, line in enumerate(self.lines):
                    if not self._hurry.is_set():
                        self._hurry.wait(max(0.0, started + n / self.rate - time.monotonic()))
                    producer.send(self.settings.input_topic, key=message_key(line), value=line)
                    self.sent = n + 1
                producer.flush(60)
            finally:
                producer.close(10)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> BackgroundProducer:
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        """Still sending at its rate (not hurried, not done)."""
        return self.thread.is_alive() and not self._hurry.is_set()

    def hurry(self) -> None:
        self._hurry.set()

    def join(self, timeout: float) -> None:
        self.hurry()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the producer did not finish within {timeout}s"
        if self.error is not None:
            raise AssertionError(f"the producer failed: {self.error!r}") from self.error
        assert self.sent == len(self.lines)


def stored_embeddings(worker: WorkerProcess, users: list[str]) -> dict[str, dict]:
    """``GET /users/{id}/embedding`` for each user: the stored graph embedded from scratch (routed to its owner)."""
    views = {}
    for uid in users:
        status, body = worker.get(f"/users/{uid}/embedding")
        assert status == 200, (uid, status, body[:300])
        views[uid] = json.loads(body)
    return views


def assigned_partitions(worker: WorkerProcess) -> set[int] | None:
    """The input partitions this worker reports lag for (``ripple_consumer_lag``, refreshed every 2 s)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = worker.get("/metrics")
    if status != 200:
        return None
    return {
        int(sample.labels["partition"])
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "ripple_consumer_lag"
    }


def wait_for_assignment(worker: WorkerProcess, done: Callable[[set[int]], bool], timeout: float, what: str) -> set[int]:
    """Polls :func:`assigned_partitions` (and health) until ``done`` holds for the assignment."""
    deadline = time.monotonic() + timeout
    while True:
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        parts = assigned_partitions(worker)
        if parts is not None and done(parts) and worker.get("/healthz")[0] == 200:
            return parts
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {parts}):\n{worker.log()}")
        time.sleep(0.5)
