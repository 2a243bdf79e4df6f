"""Reliability settings reach Faust: standby replicas, processing guarantee, group session timeout."""

from __future__ import annotations

import pytest
from faust.types.enums import ProcessingGuarantee

from stream_app.faust_app import build_app
from stream_app.settings import Settings


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
