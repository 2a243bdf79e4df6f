"""Helpers for tests that run the real worker (`python -m stream_app worker`) against the real broker."""

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

import msgspec
from kafka import KafkaConsumer, TopicPartition

from stream_app.records import UserEmbedding

ROOT = Path(__file__).resolve().parents[2]


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

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker"],
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
                raise AssertionError(f"timed out after {timeout}s waiting for {what or self.topic}")
            self.poll()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def embeddings(self) -> list[UserEmbedding]:
        """The embeddings read so far (tombstones of deleted users, value ``None``, left out)."""
        return [msgspec.json.decode(m.value, type=UserEmbedding) for m in self.messages if m.value is not None]


def latest_by_user(embeddings: list[UserEmbedding]) -> dict[str, UserEmbedding]:
    latest: dict[str, UserEmbedding] = {}
    for emb in embeddings:
        prev = latest.get(emb.user_id)
        if prev is None or emb.state_version >= prev.state_version:
            latest[emb.user_id] = emb
    return latest


def reached(expected: dict[str, UserEmbedding]) -> Callable[[TopicReader], bool]:
    """True once every expected user has been published at (at least) its expected state_version."""

    def check(reader: TopicReader) -> bool:
        latest = latest_by_user(reader.embeddings())
        return all(uid in latest and latest[uid].state_version >= e.state_version for uid, e in expected.items())

    return check
