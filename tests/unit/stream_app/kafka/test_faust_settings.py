"""Reliability settings reach Faust: standby replicas, processing guarantee, group session timeout."""

from __future__ import annotations

import pytest
from faust.types.enums import ProcessingGuarantee

from stream_app.core.settings import Settings
from stream_app.kafka.faust_app import build_app


def test_reliability_settings_are_passed_to_faust(tmp_path):
    settings = Settings.from_env(
        {
            "RIPPLE_STANDBY_REPLICAS": "1",
            "RIPPLE_PROCESSING_GUARANTEE": "exactly_once",
            "RIPPLE_SESSION_TIMEOUT_S": "9",
            "RIPPLE_COMMIT_INTERVAL_S": "0.5",
        },
        state_dir=str(tmp_path),
    )
    conf = build_app(settings).conf
    assert conf.table_standby_replicas == 1
    assert conf.processing_guarantee is ProcessingGuarantee.EXACTLY_ONCE
    assert conf.broker_session_timeout == 9.0
    assert conf.broker_heartbeat_interval == 3.0  # at most a third of the session
    assert conf.broker_commit_interval == 0.5


def test_defaults_keep_fausts_at_least_once_and_session_timeout(tmp_path):
    conf = build_app(Settings.from_env({}, state_dir=str(tmp_path))).conf
    assert conf.table_standby_replicas == 0
    assert conf.processing_guarantee is ProcessingGuarantee.AT_LEAST_ONCE
    assert conf.broker_session_timeout == 60.0
    assert conf.broker_heartbeat_interval == 3.0


def test_short_session_timeouts_get_a_faster_heartbeat(tmp_path):
    conf = build_app(Settings.from_env({"RIPPLE_SESSION_TIMEOUT_S": "6"}, state_dir=str(tmp_path))).conf
    assert conf.broker_heartbeat_interval == 2.0


@pytest.mark.parametrize("value", ["0.5", "3600"])
def test_session_timeout_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match="session_timeout_s"):
        Settings.from_env({"RIPPLE_SESSION_TIMEOUT_S": value})


def test_static_membership_and_compression_reach_faust(tmp_path):
    settings = Settings.from_env({"RIPPLE_INSTANCE_ID": "worker-7", "RIPPLE_PRODUCER_COMPRESSION": "lz4"})
    conf = build_app(settings.with_overrides(state_dir=str(tmp_path))).conf
    assert conf.consumer_group_instance_id == "worker-7"
    assert conf.producer_compression_type == "lz4"
    none = build_app(Settings.from_env({"RIPPLE_PRODUCER_COMPRESSION": "none"}, state_dir=str(tmp_path))).conf
    assert none.producer_compression_type is None


def test_by_default_a_worker_is_a_static_member_named_after_its_host_and_state(tmp_path):
    a = Settings.from_env({}, state_dir=str(tmp_path / "a"))
    again = Settings.from_env({}, state_dir=str(tmp_path / "a" / ".." / "a"))
    b = Settings.from_env({}, state_dir=str(tmp_path / "b"))
    assert a.producer_compression == "zstd"
    assert a.group_instance_id() == again.group_instance_id() != b.group_instance_id()
    assert build_app(a).conf.consumer_group_instance_id == a.group_instance_id()
    dynamic = Settings.from_env({"RIPPLE_STATIC_MEMBERSHIP": "false"}, state_dir=str(tmp_path / "a"))
    assert dynamic.group_instance_id() is None
    assert build_app(dynamic).conf.consumer_group_instance_id is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("RIPPLE_PRODUCER_COMPRESSION", "brotli"), ("RIPPLE_INSTANCE_ID", "pod 1"), ("RIPPLE_INSTANCE_ID", "x" * 250)],
)
def test_bad_compression_or_instance_id_is_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name.removeprefix("RIPPLE_").lower()):
        Settings.from_env({name: value})


def test_a_graceful_stop_makes_a_static_member_leave_the_group(tmp_path):
    """aiokafka sends LeaveGroup on close only without an instance id: Faust's shutdown signal clears it."""
    import asyncio
    from types import SimpleNamespace

    from stream_app.kafka.faust_app import build_worker, leave_group_when_closed

    def consumer_of(coordinator: SimpleNamespace) -> SimpleNamespace:
        return SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(_coordinator=coordinator)))

    assert not leave_group_when_closed(SimpleNamespace(_consumer=None))  # never started: nothing to leave

    def stop(env: dict[str, str]) -> str | None:
        """The instance id the coordinator has after Faust's on_before_shutdown signal."""
        worker = build_worker(Settings.from_env(env, state_dir=str(tmp_path / str(len(env)))))
        coordinator = SimpleNamespace(_group_instance_id="worker-7")
        worker.app._consumer = consumer_of(coordinator)
        asyncio.run(worker.app.on_before_shutdown.send())
        return coordinator._group_instance_id

    assert stop({}) is None
    assert stop({"RIPPLE_LEAVE_GROUP_ON_STOP": "false"}) == "worker-7"
    assert stop({"RIPPLE_STATIC_MEMBERSHIP": "false", "RIPPLE_APP_ID": "dynamic"}) == "worker-7"
