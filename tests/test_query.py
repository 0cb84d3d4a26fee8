"""`fervid query` and the views in sql/, checked against values computed here from the Parquet with
pyarrow and numpy (not with the views' SQL), on the shared real run over ../shared/videos."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from jobs.bench_query import synthetic_record, synthetic_tables
from pipeline import query, schema
from pipeline.cli import main
from pipeline.results import ResultsStore
from tests.test_cli import assert_one_line_error, fervid


@pytest.fixture(scope="module")
def con(analysed) -> duckdb.DuckDBPyConnection:
    return query.connect(analysed)


@pytest.fixture(scope="module")
def records(analysed) -> dict[str, dict]:
    """Each video's record, keyed by file name (the shared run has one run and no failures)."""
    return {Path(r["path"]).name: r for r in query.latest_records(analysed).to_pylist()}


@pytest.fixture(scope="module")
def labels(analysed) -> list[str]:
    return json.loads(next((analysed / "runs").glob("*.json")).read_text())["labels"]


def read(results: Path, table: str, record: dict) -> dict[str, np.ndarray]:
    """One video's faces or frames file of its run, as numpy columns sorted by time."""
    data = pq.read_table(results / table / f"video_id={record['video_id']}" / f"{record['run_id']}.parquet")
    data = data.sort_by([("pts_s", "ascending")])
    return {name: np.array(column.to_pylist(), dtype=object) if column.null_count else column.to_numpy()
            for name, column in zip(data.column_names, data.columns)}


def usable_only(faces: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The faces the summary views count: those that passed the quality thresholds."""
    keep = faces["usable"].astype(bool)
    return {name: column[keep] for name, column in faces.items()}


def rows(con: duckdb.DuckDBPyConnection, sql: str, *params) -> list[dict]:
    return con.sql(sql, params=list(params)).to_dicts()


def test_timeline_has_one_row_per_second_with_the_sampling_rate(con, analysed, records, labels, test_config):
    record = records["single_face.mp4"]
    frames, faces = read(analysed, "frames", record), read(analysed, "faces", record)
    seconds, frames_per_second = np.unique(np.floor(frames["pts_s"]), return_counts=True)
    timeline = rows(con, "SELECT * FROM timeline WHERE video_id = ? ORDER BY start_s", record["video_id"])

    assert [r["start_s"] for r in timeline] == list(seconds) == list(np.arange(seconds[0], seconds[-1] + 1))
    assert [r["frames_sampled"] for r in timeline] == list(frames_per_second)
    assert set(frames_per_second[:-1]) == {test_config.sampling.fps}  # the last second of a 2.4 s video is partial
    face_second = np.floor(faces["pts_s"])
    for r in timeline:
        here = face_second == r["start_s"]
        assert r["faces_seen"] == here.sum() > 0
        here &= faces["usable"]
        assert r["usable_faces"] == here.sum() > 0
        means = [faces[f"p_{label}"][here].mean() for label in labels]
        assert [r[f"p_{label}"] for label in labels] == pytest.approx(means, abs=1e-6)
        assert r["emotion"] == labels[int(np.argmax(means))]


def test_video_summary_matches_a_direct_computation(con, analysed, records, labels):
    summary = {r["path"]: r for r in rows(con, "SELECT * FROM video_summary")}
    assert set(summary) == {r["path"] for r in records.values()}
    assert summary[records["no_face.mp4"]["path"]]["face_share"] == 0
    assert summary[records["single_face.mp4"]["path"]]["face_share"] == 1
    for record in records.values():
        got = summary[record["path"]]
        frames, faces = read(analysed, "frames", record), read(analysed, "faces", record)
        assert got["sampled_frames"] == len(frames["pts_s"]) and got["faces"] == len(faces["pts_s"])
        assert got["face_share"] == pytest.approx(np.mean(frames["face_count"] > 0))
        faces = usable_only(faces)
        assert got["usable_faces"] == len(faces["pts_s"])
        if not len(faces["pts_s"]):
            assert got["dominant_emotion"] is None and got[f"mean_{labels[0]}"] is None
            continue
        assert got["usable_share"] == pytest.approx(got["usable_faces"] / got["faces"])
        counts = Counter(faces["emotion"])
        dominant = max(labels, key=lambda label: (counts[label], -labels.index(label)))
        assert got["dominant_emotion"] == dominant
        assert got["dominant_share"] == pytest.approx(counts[dominant] / len(faces["emotion"]))
        for label in labels:
            p = faces[f"p_{label}"]
            assert got[f"mean_{label}"] == pytest.approx(p.mean(), abs=1e-6)
            assert got[f"peak_{label}"] == pytest.approx(p.max())
            assert p[faces["pts_s"] == got[f"peak_{label}_s"]].max() == pytest.approx(p.max())
    # the crying woman looks down at times: some of her faces are left out, and only those
    assert 0.5 < summary[records["WolfgangLanger_Pexels.mp4"]["path"]]["usable_share"] < 1


def face_present(frames: dict, faces: dict, duration_s: float) -> dict:
    """Per track: the time its face is on screen, as merged (start, end) intervals. A sampled frame
    stands for the time until the next one; the last one for the time until the video ends."""
    ends = np.append(frames["pts_s"][1:], max(duration_s, frames["pts_s"][-1]))
    position = {index: i for i, index in enumerate(frames["frame_index"])}
    spans = {}
    for track in set(faces["track_id"]):
        seen = sorted({position[f] for f, t in zip(faces["frame_index"], faces["track_id"]) if t == track})
        intervals = []
        for i in seen:
            if intervals and intervals[-1][2] == i - 1:
                intervals[-1][1:] = [ends[i], i]
            else:
                intervals.append([frames["pts_s"][i], ends[i], i])
        spans[track] = [(start, end) for start, end, _ in intervals]
    return spans


def merged(segments: list[dict]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for s in segments:
        if out and s["start_s"] == pytest.approx(out[-1][1]):
            out[-1][1] = s["end_s"]
        else:
            out.append([s["start_s"], s["end_s"]])
    return [tuple(interval) for interval in out]


def test_emotion_segments_cover_the_face_time_in_order_without_overlap(con, analysed, records, labels):
    for record in records.values():
        frames, faces = read(analysed, "frames", record), usable_only(read(analysed, "faces", record))
        segments = rows(con, "SELECT * FROM emotion_segments WHERE video_id = ?", record["video_id"])
        expected = face_present(frames, faces, record["duration_s"])
        assert {s["track_id"] for s in segments} == set(expected)
        for track, spans in expected.items():
            mine = [s for s in segments if s["track_id"] == track]
            for before, after in zip(mine, mine[1:]):
                assert before["end_s"] <= after["start_s"] + 1e-9  # ordered, no overlap
            assert all(s["emotion"] in labels and s["duration_s"] > 0 for s in mine)
            assert np.ravel(merged(mine)).tolist() == pytest.approx(np.ravel(spans).tolist())


def test_transitions_count_consecutive_segment_changes(con):
    segments = rows(con, "SELECT * FROM emotion_segments ORDER BY video_id, track_id, start_s")
    expected = Counter((a["video_id"], a["emotion"], b["emotion"]) for a, b in zip(segments, segments[1:])
                       if a["video_id"] == b["video_id"] and a["track_id"] == b["track_id"]
                       and a["emotion"] != b["emotion"])
    got = {(r["video_id"], r["from_emotion"], r["to_emotion"]): r["transitions"]
           for r in rows(con, "SELECT * FROM transitions")}
    assert got == dict(expected) and got


def scans(plan: list[dict] | dict) -> list[dict]:
    """The table scans of an EXPLAIN (FORMAT json) plan."""
    nodes = plan if isinstance(plan, list) else [plan]
    return [n["extra_info"] for n in nodes if n["name"].endswith("_SCAN")] + [
        scan for n in nodes for scan in scans(n.get("children", []))]


@pytest.fixture(scope="module")
def plain(analysed) -> duckdb.DuckDBPyConnection:
    """The printed view definitions in a plain DuckDB connection, as any DuckDB client would use them."""
    connection = duckdb.connect()
    connection.execute(query.view_sql(analysed))
    return connection


def test_a_video_id_filter_reads_only_that_video(con, plain, records):
    video_id = records["single_face.mp4"]["video_id"]
    for view in ("faces", "frames", "video_summary", "timeline", "emotion_segments"):
        sql = f"EXPLAIN (FORMAT json) SELECT * FROM {view} WHERE video_id = '{video_id}'"
        data = [s for s in scans(json.loads(con.sql(sql).fetchall()[0][1]))  # the files read, not the records
                if "status" not in s["Projections"] and "latest_records_snapshot" not in s.get("Table", "")]
        assert data and all(f"\"video_id\" = '{video_id}'" in str(s["Filters"]) for s in data), (view, data)
    # From a plain DuckDB client: only that partition's file is opened, and a time filter reaches the reader.
    plan = plain.sql(f"EXPLAIN ANALYZE SELECT * FROM faces WHERE video_id = '{video_id}' AND pts_s >= 1").fetchall()
    assert set(re.findall(r"faces/video_id=(\w+)/", plan[0][1])) == {video_id} and "pts_s >= 1.0" in plan[0][1]


def test_printed_views_give_the_same_answers_in_any_duckdb_client(con, plain):
    for view in ("videos", "faces", "frames", "timeline", "video_summary", "emotion_segments", "transitions"):
        sql = f"SELECT * FROM {view} ORDER BY ALL"
        assert plain.sql(sql).fetchall() == con.sql(sql).fetchall(), view
    counts = plain.execute("SELECT (SELECT count(*) FROM timeline(0.5)), (SELECT count(*) FROM timeline)").fetchone()
    assert counts[0] > counts[1]  # the macro takes other bucket widths


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writes_through_fervid_query_fail_and_leave_the_results_untouched(results_copy, tmp_path, capsys):
    before = snapshot(results_copy)
    record = next(iter(pq.read_table(next((results_copy / "videos").glob("*.parquet"))).to_pylist()))
    existing = results_copy / "faces" / f"video_id={record['video_id']}" / f"{record['run_id']}.parquet"
    attempts = [
        f"COPY (SELECT 1 AS x) TO '{existing}' (FORMAT parquet)",
        f"COPY faces TO '{results_copy / 'videos' / 'extra.parquet'}' (FORMAT parquet)",
        f"COPY faces TO '{tmp_path / 'elsewhere.csv'}'",
        f"EXPORT DATABASE '{results_copy / 'export'}'",
        f"ATTACH '{results_copy / 'views.duckdb'}' AS db",
        "SET enable_external_access = true",
        f"SELECT * FROM read_csv('{results_copy / 'runs' / '*.json'}')",
    ]
    for sql in attempts:
        assert main(["query", str(results_copy), sql]) == 1, sql
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fervid: error: query failed:"), (sql, lines)
    with pytest.raises(duckdb.Error):  # the notebook connection is as locked as the command
        query.connect(results_copy).execute(attempts[0])
    assert_one_line_error(fervid("query", results_copy, attempts[0]), "query failed")
    assert not (tmp_path / "elsewhere.csv").exists()
    assert snapshot(results_copy) == before


def test_bad_queries_and_folders_fail_in_one_line(analysed, tmp_path, capsys):
    assert_one_line_error(fervid("query", analysed, "SELECT no_such_column FROM video_summary"),
                          "query failed", "no_such_column")
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(analysed), "SELEC 1"], "syntax error"),
        ([str(analysed), "SELECT * FROM no_such_view"], "no_such_view"),
        ([str(tmp_path / "missing"), "SELECT 1"], "does not exist"),
        ([str(tmp_path / "empty"), "SELECT 1"], "no fervid results"),
        ([str(analysed)], "give one query"),
        ([str(analysed), "-f", str(tmp_path / "none.sql")], "cannot read"),
        ([str(analysed), "SELECT 1", "--format", "parquet"], "needs --output"),
        ([str(analysed), "SELECT landmarks FROM faces", "--format", "csv"], "CSV cannot hold"),
        ([str(analysed), "SELECT 1", "-o", str(tmp_path / "no" / "dir.csv")], "cannot write"),
        ([str(analysed), "SELECT 1", "-o", str(analysed / "out.csv")], "inside the results folder"),
    ]
    for args, fragment in cases:
        assert main(["query", *args]) == 1, args
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, lines)


def test_output_formats_and_sql_files(analysed, tmp_path, capsys):
    sql = "SELECT path, faces, face_share FROM video_summary ORDER BY path"
    expected = query.connect(analysed).sql(sql).to_arrow_table()
    assert main(["query", str(analysed), sql]) == 0
    table = capsys.readouterr().out
    assert "face_share" in table and "single_face.mp4" in table
    assert main(["query", str(analysed), sql, "--format", "csv", "-o", str(tmp_path / "s.csv")]) == 0
    assert pa_csv.read_csv(tmp_path / "s.csv").to_pylist() == expected.to_pylist()
    assert main(["query", str(analysed), sql, "--format", "parquet", "-o", str(tmp_path / "s.parquet")]) == 0
    assert pq.read_table(tmp_path / "s.parquet").equals(expected)
    (tmp_path / "q.sql").write_text(f"CREATE TEMP VIEW mine AS {sql};\nSELECT * FROM mine;\n")
    assert main(["query", str(analysed), "-f", str(tmp_path / "q.sql"), "--format", "json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == expected.to_pylist()


def test_only_the_latest_ok_run_counts_and_labels_follow_the_files(tmp_path, capsys):
    """Synthetic results with other labels: a video whose latest run failed is hidden, a skip does not
    hide the run before it, superseded and in-progress files are not read."""
    labels, rng, t0 = ["calm", "tense"], np.random.default_rng(0), datetime(2026, 1, 1, tzinfo=timezone.utc)
    store = ResultsStore(tmp_path)
    runs: dict[str, list[dict]] = {"run0": [], "run1": [], "run2": [], "run3": []}

    def analyse(video_id: str, run_id: str, frames: int, hours: int) -> None:
        store.write_video(video_id, run_id, *synthetic_tables(frames, labels, run_id, rng))
        runs[run_id].append(synthetic_record(video_id, run_id, frames, finished_at=t0 + timedelta(hours=hours)))

    analyse("a", "run1", 4, 1)
    runs["run2"].append(synthetic_record("a", "run2", 0, "failed", t0 + timedelta(hours=2)))
    analyse("b", "run0", 3, 0)  # superseded by run1, its files linger
    analyse("b", "run1", 5, 1)
    runs["run3"].append(synthetic_record("b", "run3", 0, "skipped", t0 + timedelta(hours=3)))
    runs["run1"].append(synthetic_record("c", "run1", 0, "failed", t0 + timedelta(hours=1)))
    analyse("c", "run2", 6, 2)
    for run_id, records in runs.items():
        store.write_records(run_id, records)
    partial = tmp_path / "faces" / "video_id=c" / "run2.parquet"
    partial.with_name("run9.parquet.tmp").write_bytes(partial.read_bytes())

    con = query.connect(tmp_path)
    assert rows(con, "SELECT video_id, run_id FROM videos ORDER BY video_id") == [
        {"video_id": "b", "run_id": "run1"}, {"video_id": "c", "run_id": "run2"}]
    assert rows(con, "SELECT video_id, count(*) AS n FROM faces GROUP BY video_id ORDER BY video_id") == [
        {"video_id": "b", "n": 5}, {"video_id": "c", "n": 6}]
    columns = con.sql("SELECT * FROM video_summary").columns
    assert {"mean_calm", "peak_tense_s", "peak_tense"} <= set(columns) and not any("angry" in c for c in columns)
    assert {r["emotion"] for r in rows(con, "SELECT emotion FROM timeline")} <= {"calm", "tense"}


def test_results_from_before_quality_existed_count_every_face_as_usable(tmp_path):
    """A faces file without the quality columns (written before they existed) beside a new one: the views
    read both, the old faces as usable, the new ones as their column says."""
    labels, rng = ["calm", "tense"], np.random.default_rng(1)
    store = ResultsStore(tmp_path)
    old_faces, old_frames = synthetic_tables(4, labels, "old", rng)
    store.write_video("old", "old", old_faces.drop_columns([name for name, _ in schema.FACE_QUALITY] + ["usable"]), old_frames)
    new_faces, new_frames = synthetic_tables(50, labels, "new", rng)
    store.write_video("new", "new", new_faces, new_frames)
    store.write_records("old", [synthetic_record("old", "old", 4)])
    store.write_records("new", [synthetic_record("new", "new", 50)])
    summary = {r["video_id"]: r for r in rows(query.connect(tmp_path), "SELECT * FROM video_summary")}
    assert (summary["old"]["faces"], summary["old"]["usable_faces"]) == (4, 4)
    usable = int(pc.sum(new_faces["usable"].cast("int64")).as_py())
    assert summary["new"]["usable_faces"] == usable and 0 < usable < 50
