"""Integration fixtures: the real Kafka broker started by deploy/kafka/kafka.sh."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

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
def unique() -> str:
    return uuid.uuid4().hex[:10]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
