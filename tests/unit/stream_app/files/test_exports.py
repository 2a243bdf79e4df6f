"""`ripple replay --latest-only` and Parquet output: one row per user, and the same vectors as the JSON lines."""

from __future__ import annotations

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from bench.worker_process import latest_by_user
from stream_app.cli import app
from stream_app.core.records import UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.exports import read_parquet
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from tests.conftest import write_jsonl


def events(tmp_path, n: int = 1500) -> str:
    lines = list(generate_events(GeneratorSpec(users=30, items=100, events=n, seed=4, malformed=0.02)))
    return write_jsonl(tmp_path / "events.jsonl", lines)


def run(tmp_path, name: str, events_path: str, out: str, **kw) -> None:
    settings = Settings.from_env({}, state_dir=str(tmp_path / f"state-{name}"), batch_size=64)
    replay(events_path, "jsonl", str(tmp_path / out), settings, progress=False, **kw)


def jsonl(path) -> list[UserEmbedding]:
    with open(path, "rb") as f:
        return [msgspec.json.decode(line, type=UserEmbedding) for line in f]


def test_latest_only_parquet_reads_back_to_the_final_jsonl_records(tmp_path):
    path = events(tmp_path)
    run(tmp_path, "all", path, "all.jsonl")
    run(tmp_path, "latest", path, "latest.parquet", latest_only=True)
    final = latest_by_user(jsonl(tmp_path / "all.jsonl"))

    table = pq.read_table(tmp_path / "latest.parquet")
    assert table.schema.names == ["user_id", "event_ts", "embedding", "model_version", "state_version"]
    assert table.schema.field("event_ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.schema.field("state_version").type == pa.int64()
    assert table.num_rows == len(final) == len(set(table.column("user_id").to_pylist()))

    rows = read_parquet(str(tmp_path / "latest.parquet"))
    assert rows.keys() == final.keys()
    for uid, want in final.items():
        got = rows[uid]
        np.testing.assert_array_equal(got["embedding"], np.asarray(want.embedding, dtype=np.float32))
        assert (got["model_version"], got["state_version"]) == (want.model_version, want.state_version)
        assert abs(got["event_ts"].timestamp() - want.event_ts) < 1e-6


def test_full_parquet_has_every_record_and_latest_only_jsonl_one_line_per_user(tmp_path):
    path = events(tmp_path)
    run(tmp_path, "all", path, "all.jsonl")
    run(tmp_path, "pq", path, "all.parquet")
    run(tmp_path, "latest", path, "latest.jsonl", latest_only=True)
    published = jsonl(tmp_path / "all.jsonl")
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.num_rows == len(published)
    assert table.column("user_id").to_pylist() == [e.user_id for e in published]
    assert table.column("state_version").to_pylist() == [e.state_version for e in published]
    values = np.concatenate([np.asarray(v, np.float32) for v in table.column("embedding").to_pylist()])
    np.testing.assert_array_equal(values, np.float32([x for e in published for x in e.embedding]))

    latest = jsonl(tmp_path / "latest.jsonl")
    assert len(latest) == len({e.user_id for e in latest})

    def untimed(e: UserEmbedding) -> UserEmbedding:
        return msgspec.structs.replace(e, computed_at=0.0)  # separate runs: only when it was computed differs

    assert {e.user_id: untimed(e) for e in latest} == {u: untimed(e) for u, e in latest_by_user(published).items()}
    assert not list(tmp_path.glob("*.tmp")), "temporary files were left behind"


def test_append_is_refused_for_files_written_whole(tmp_path):
    path = events(tmp_path, 200)
    for out, kw in (("x.parquet", {}), ("x.jsonl", {"latest_only": True})):
        with pytest.raises(ValueError, match="--append cannot be combined"):
            run(tmp_path, "a", path, out, append=True, **kw)


def test_cli_replay_latest_only_parquet_and_the_untrained_note(tmp_path):
    path = events(tmp_path, 300)
    out = tmp_path / "users.parquet"
    result = CliRunner().invoke(
        app,
        ["replay", "--events", path, "--out", str(out), "--state", str(tmp_path / "st"), "--latest-only"],
    )
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output and "ripple train" in result.output
    assert pq.read_table(out).num_rows == len(read_parquet(str(out)))
