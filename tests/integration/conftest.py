"""Integration fixtures: the real Kafka broker started by deploy/kafka/kafka.sh, and a real redis-server."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from bench.redis_server import E_NO_REDIS, RedisServer, redis_binary

pytestmark = pytest.mark.integration


def broker_address() -> str:
    return os.environ.get("RIPPLE_TEST_BROKER", "127.0.0.1:9092")


def broker_up(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker() -> str:
    """The broker address; fails (not skips) under CI, where the broker must be running."""
    address = broker_address()
    if not broker_up(address):
        message = f"no Kafka broker on {address}; start one with `bash deploy/kafka/kafka.sh start`"
        if os.environ.get("CI") or os.environ.get("RIPPLE_TEST_BROKER"):
            pytest.fail(message)
        pytest.skip(message)
    return address


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port (AOF on); fails, never skips, when Redis is not installed."""
    if redis_binary() is None:
        pytest.fail(E_NO_REDIS)
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
