"""Compaction: the views give the same rows before, during and after it, whatever point it is killed at, and
commits add files without rewriting any."""

import shutil
import signal
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.bench_query import LABELS, synthetic_record, synthetic_tables, video_id, write_synthetic
from pipeline import storage
from pipeline.cli import main
from pipeline.compact import MERGE_PARTS, compact, delete_replaced
from pipeline.query import connect, table_files, view_sql
from pipeline.results import ResultsStore
from tests.conftest import wait_for

VIEWS = ("videos", "frames", "faces", "video_summary", "timeline", "emotion_segments", "tracks", "people",
         "group_summary")


def normalized(fetched: list[tuple]) -> list[tuple]:
    """Rows sorted, floats rounded: a sum's last bits depend on the order DuckDB's threads add in."""
    return sorted((tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in fetched), key=repr)


def rows(results) -> dict[str, list]:
    con = connect(results)
    return {view: normalized(con.sql(f"SELECT * FROM {view}").fetchall()) for view in VIEWS}


def small_files(results, table="faces") -> list:
    return [loc for loc in table_files(storage.locate(results), table) if not loc.name.startswith("part-")]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """300 videos of 20 frames committed as a run commits them (one compaction at 256 commits)."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, 300, 20)
    return root


@pytest.fixture
def uncompacted(synthetic, tmp_path):
    """A copy of the synthetic results with every part deleted and its files restored: one file per video."""
    root = tmp_path / "results"
    shutil.copytree(synthetic, root)
    for part in root.glob("*/part-*.parquet"):
        part.unlink()
    return root


def test_a_run_compacts_as_it_goes_and_the_views_read_parts_and_small_files_as_one(synthetic, uncompacted):
    assert list(synthetic.glob("faces/part-*.parquet")) and list(synthetic.glob("videos/part-*.parquet"))
    assert len(small_files(synthetic)) == 300 - 256  # the files after the last compaction
    expected = rows(uncompacted)
    assert len(expected["video_summary"]) == 300 and len(expected["faces"]) == 300 * 20
    assert rows(synthetic) == expected


def test_views_are_the_same_before_during_and_after_compaction(uncompacted):
    expected = rows(uncompacted)
    before = connect(uncompacted)  # a reader that listed the files before the compaction began
    done = compact(uncompacted, min_files=1)
    assert done.merged == {"videos": 300, "faces": 300, "frames": 300} and done.deleted == 0
    assert rows(uncompacted) == expected  # the part and the files it replaced, both on disk: counted once
    assert normalized(before.sql("SELECT * FROM faces").fetchall()) == expected["faces"]
    plain = duckdb.connect()
    plain.execute(view_sql(uncompacted))  # --print-views: plain DuckDB, any client
    assert normalized(plain.sql("SELECT * FROM video_summary").fetchall()) == expected["video_summary"]
    assert compact(uncompacted, min_files=1, keep_replaced_s=0).deleted == 900
    assert not list(uncompacted.glob("faces/video_id=*"))  # their folders go too
    assert len(list(uncompacted.glob("*/part-*.parquet"))) == 3
    assert rows(uncompacted) == expected


def test_a_compaction_killed_at_any_point_loses_nothing_and_the_next_one_finishes(uncompacted):
    expected = rows(uncompacted)
    command = [sys.executable, "-m", "pipeline.cli", "compact", str(uncompacted), "--keep-replaced", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: process.poll() is not None or list(uncompacted.glob("*/part-*.parquet")))
    process.send_signal(signal.SIGKILL)  # after its first part landed (or, on a fast machine, at its end)
    process.wait()
    assert rows(uncompacted) == expected
    assert main(["compact", str(uncompacted), "--keep-replaced", "0"]) == 0
    assert rows(uncompacted) == expected
    assert not small_files(uncompacted) and not list(uncompacted.glob("**/*.tmp"))


def test_a_part_written_but_nothing_deleted_yet_is_the_state_a_kill_leaves(uncompacted):
    expected = rows(uncompacted)
    compact(uncompacted, min_files=1)
    part = next(uncompacted.glob("faces/part-*.parquet"))
    replaced = list(uncompacted.glob("faces/video_id=*/*.parquet"))
    for path in replaced[: len(replaced) // 2]:  # killed halfway through deleting
        path.unlink()
    assert rows(uncompacted) == expected
    part.unlink()  # a part is deleted only after everything it replaced: deleting it first would bring those back
    assert len(rows(uncompacted)["faces"]) == len(expected["faces"]) - 20 * (len(replaced) // 2)


def test_rerun_videos_count_their_new_rows_and_merging_parts_drops_the_old(uncompacted):
    compact(uncompacted, min_files=1, keep_replaced_s=0)
    store = ResultsStore(uncompacted)
    faces, frames = synthetic_tables(7, LABELS, "again", np.random.default_rng(1))
    for v in range(MERGE_PARTS):  # each re-run and compacted alone: parts under PART_ROWS pile up, then merge
        store.write_video(video_id(v), "again", faces, frames)
        store.write_records("again", [synthetic_record(video_id(u), "again", 7) for u in range(v + 1)])
        compact(uncompacted, min_files=1, keep_replaced_s=0)
    con = connect(uncompacted)
    assert con.sql("SELECT run_id, count(*) FROM faces WHERE video_id = $v GROUP BY 1", params={"v": video_id(3)}
                   ).fetchall() == [("again", 7)]
    assert len(rows(uncompacted)["faces"]) == (300 - MERGE_PARTS) * 20 + MERGE_PARTS * 7
    parts = [pq.read_table(p) for p in uncompacted.glob("faces/part-*.parquet")]
    assert len(parts) == 1  # the first part and the re-runs' merged into one
    assert len(parts[0]) == (300 - MERGE_PARTS) * 20 + MERGE_PARTS * 7  # the old rows are gone from the files


def test_a_commit_adds_one_records_file_and_rewrites_none(tmp_path):
    store = ResultsStore(tmp_path)
    records = [synthetic_record("a", "r1", 3)]
    store.write_records("r1", records)
    first = (tmp_path / "videos" / "r1.0000000.parquet").stat()
    records.append(synthetic_record("b", "r1", 3))
    store.write_records("r1", records)
    store.write_records("r1", records)  # nothing new: nothing written
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["r1.0000000.parquet", "r1.0000001.parquet"]
    assert (tmp_path / "videos" / "r1.0000000.parquet").stat().st_mtime_ns == first.st_mtime_ns


def test_fervid_compact_on_real_results_keeps_every_view(analysed, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(analysed, results)
    expected = rows(results)
    assert main(["compact", str(results), "--keep-replaced", "0"]) == 0
    assert "compacted:" in capsys.readouterr().out
    assert not list(results.glob("faces/video_id=*")) and not list(results.glob("tracks/video_id=*"))
    assert rows(results) == expected
    assert main(["compact", str(tmp_path / "nothing")]) == 1
    assert "holds no fervid results" in capsys.readouterr().err


def test_delete_replaced_leaves_files_a_reader_may_still_be_reading(uncompacted):
    compact(uncompacted, min_files=1)
    root = storage.locate(uncompacted)
    assert delete_replaced(root, "faces", keep_replaced_s=600) == 0
    assert len(list(uncompacted.glob("faces/video_id=*/*.parquet"))) == 300


def test_once_compacted_another_engine_reads_each_table_as_its_parts(analysed, tmp_path):
    pl = pytest.importorskip("polars")
    results = tmp_path / "results"
    shutil.copytree(analysed, results)
    assert main(["compact", str(results), "--keep-replaced", "0"]) == 0
    videos = (pl.scan_parquet(str(results / "videos" / "part-*.parquet"))  # the latest_records rule, in Polars
              .filter(pl.col("status") != "skipped").sort("finished_at", "run_id")
              .group_by("video_id").last().filter(pl.col("status") == "ok"))
    faces = pl.scan_parquet(str(results / "faces" / "part-*.parquet")).join(videos, on=["video_id", "run_id"],
                                                                               how="semi")
    got = faces.group_by("video_id").agg(pl.len(), pl.col("p_happy").mean()).sort("video_id").collect().rows()
    expected = connect(results).sql("SELECT video_id, count(*), avg(p_happy) FROM faces GROUP BY 1 ORDER BY 1"
                                    ).fetchall()
    assert [(v, n) for v, n, _ in got] == [(v, n) for v, n, _ in expected] and len(got) == 4  # no_face.mp4 has none
    assert all(abs(a[2] - b[2]) < 1e-6 for a, b in zip(got, expected))


def test_compact_is_refused_while_a_run_holds_the_results(uncompacted, capsys):
    with ResultsStore(uncompacted).lock():
        assert main(["compact", str(uncompacted)]) == 1
    assert "in use by another fervid run" in capsys.readouterr().err
    assert len(small_files(uncompacted)) == 300  # nothing merged
