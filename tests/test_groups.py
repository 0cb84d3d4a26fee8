"""Comparing groups of videos: folders and `fervid meta` columns, group_summary and group_timeline checked
against counts made here with pyarrow, and the overview page in headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from pipeline.cli import main
from pipeline.query import connect, latest_records
from pipeline.runner import Runner

HOSTILE = "<img src=x onerror=alert(3)>"  # a folder name


@pytest.fixture(scope="module")
def grouped(shared, test_config, tmp_path_factory) -> tuple[Path, Path]:
    """RESULTS of one run over two folders of shared clips: calm/ and a folder with a hostile name."""
    videos = tmp_path_factory.mktemp("groups")
    for folder, clips in (("calm", ["single_face.mp4", "WolfgangLanger_Pexels.mp4"]),
                          (HOSTILE, ["noface_face.mov", "face_noface.mov", "no_face.mp4"])):
        (videos / folder).mkdir()
        for clip in clips:
            shutil.copy(shared / "videos" / clip, videos / folder / clip)
    out = tmp_path_factory.mktemp("results")
    assert Runner(videos, out, test_config, show_progress=False).run().counts["ok"] == 5
    return out, videos


def shares_by_folder(results: Path, labels: list[str]) -> dict[str, dict[str, float]]:
    """Per folder, each label's share of the usable faces, counted from the Parquet files."""
    folder_of = {r["video_id"]: r["folder"] for r in latest_records(results).to_pylist()}
    faces = ds.dataset(results / "faces", format="parquet", partitioning="hive").to_table()
    faces = faces.filter(pc.field("usable"))
    counted = {}
    for folder in set(folder_of.values()):
        mine = faces.filter(pc.is_in(faces["video_id"], value_set=pc.cast(
            [v for v, f in folder_of.items() if f == folder], faces["video_id"].type)))
        emotions = np.asarray(mine["emotion"].to_pylist())
        counted[folder] = {label: float(np.mean(emotions == label)) if len(emotions) else None for label in labels}
    return counted


def test_group_summary_has_a_row_per_folder_matching_a_direct_count(grouped):
    results, _ = grouped
    con = connect(results)
    labels = [c.removeprefix("share_") for c in con.sql("SELECT * FROM group_summary").columns
              if c.startswith("share_") and not c.endswith(("_low", "_high"))]
    rows = {r["group_name"]: r for r in con.sql("SELECT * FROM group_summary WHERE group_by = 'folder'").to_dicts()}
    assert sorted(rows) == sorted(["calm", HOSTILE]) and rows["calm"]["videos"] == 2 and rows[HOSTILE]["videos"] == 3
    expected = shares_by_folder(results, labels)
    for folder, row in rows.items():
        for label in labels:
            assert row[f"share_{label}"] == pytest.approx(expected[folder][label], abs=0.001), (folder, label)
            assert row[f"share_{label}_low"] - 1e-9 <= row[f"share_{label}"] <= row[f"share_{label}_high"] + 1e-9
    again = connect(results).sql("SELECT * FROM group_summary ORDER BY ALL").fetchall()
    assert again == con.sql("SELECT * FROM group_summary ORDER BY ALL").fetchall()  # a fixed seed
    curve = con.sql("SELECT * FROM group_timeline(10) WHERE group_name = 'calm' ORDER BY bin").to_dicts()
    assert [r["bin"] for r in curve] == list(range(10))
    assert all(sum(r[f"share_{label}"] for label in labels) == pytest.approx(1.0) for r in curve)


def test_meta_matches_videos_three_ways_and_reports_the_rest(grouped, tmp_path, capsys):
    results, videos = grouped
    ids = {Path(r["path"]).name: r["video_id"] for r in latest_records(results).to_pylist()}
    results_copy = tmp_path / "results"
    shutil.copytree(results, results_copy)
    table = tmp_path / "meta.csv"
    table.write_text("video_id,path,file,condition\n"
                     f"{ids['single_face.mp4']},,,control\n"
                     f",{videos / 'calm' / 'WolfgangLanger_Pexels.mp4'},,ad\n"
                     ",,noface_face.mov,ad\n"
                     ",,nobody.mp4,ad\n")
    assert main(["meta", str(results_copy), str(table)]) == 3
    out, err = capsys.readouterr()
    assert "attached condition to 3 videos" in out and err.strip() == (
        "fervid: not attached: line 5: file nobody.mp4: no analysed video")
    groups = connect(results_copy).sql("SELECT group_name, videos FROM group_summary WHERE group_by = 'condition' "
                                       "ORDER BY group_name").fetchall()
    assert groups == [("ad", 2), ("control", 1)]
    report = tmp_path / "report"
    assert main(["report", str(results_copy), "--out", str(report), "--group-by", "condition"]) == 0
    overview = (report / "overview.html").read_text()
    assert 'data-group="ad"' in overview and 'data-group="control"' in overview
    assert main(["report", str(results_copy), "--out", str(report), "--group-by", "mood"]) == 1
    assert "can be grouped by folder, condition" in capsys.readouterr().err


def test_the_overview_draws_its_charts_and_shows_names_as_text(grouped, open_page, tmp_path):
    results, _ = grouped
    assert main(["report", str(results), "--out", str(tmp_path / "report")]) == 0
    page, problems = open_page(tmp_path / "report" / "overview.html")
    page.wait_for_selector("#shares .main-svg")
    assert page.locator("#shares .bars path").count() > 2  # bars drawn
    assert page.locator(".curve").count() == 2
    for i in range(2):  # a line per emotion, drawn (some flat at 0%)
        page.wait_for_selector(f"#curve-{i} .scatterlayer path.js-line", state="attached")
        lines = page.locator(f"#curve-{i} .scatterlayer path.js-line").evaluate_all("ps => ps.map(p => p.getAttribute('d'))")
        assert len(lines) == 7 and all(len(d) > 10 for d in lines)
    assert page.locator(f'#groups tr[data-group="{HOSTILE}"] td').first.inner_text() == HOSTILE
    assert page.locator("#people tbody tr").count() == 2  # the man, in both folders, and the woman
    assert problems == []
    index, problems = open_page(tmp_path / "report" / "index.html")
    assert index.locator("#overview").get_attribute("href") == "overview.html" and problems == []


def test_a_group_of_thousands_of_videos_gets_the_normal_interval_the_bootstrap_tends_to(tmp_path):
    """2,400 videos in one folder (over the 2,000 the bootstrap is kept for), each one of 12 random
    variants: group_summary's interval against 1,000 bootstrap resamples drawn here with numpy."""
    from jobs.bench_query import LABELS, synthetic_record, synthetic_tables, video_id
    from pipeline.compact import write_part
    from pipeline.results import ResultsStore
    from pipeline.schema import VIDEOS_SCHEMA

    rng = np.random.default_rng(3)
    variants = [synthetic_tables(int(rng.integers(5, 40)), LABELS, "r", rng)[0] for _ in range(12)]
    videos = 2400
    store = ResultsStore(tmp_path)
    chosen = [variants[v % 12] for v in range(videos)]
    faces = pa.concat_tables([t.append_column("video_id", pa.array([video_id(v)] * len(t)))
                              for v, t in enumerate(chosen)])
    write_part(store.root, "faces", [], faces)
    frames = pa.concat_tables([pa.table({"frame_index": t["frame_index"], "pts_s": t["pts_s"],
                                         "face_count": pa.array([1] * len(t), pa.int16()),
                                         "small_faces": pa.array([0] * len(t), pa.int16()), "run_id": t["run_id"],
                                         "video_id": pa.array([video_id(v)] * len(t))}) for v, t in enumerate(chosen)])
    write_part(store.root, "frames", [], frames)
    write_part(store.root, "videos", [], pa.Table.from_pylist(
        [synthetic_record(video_id(v), "r", len(chosen[v])) for v in range(videos)], schema=VIDEOS_SCHEMA))
    con = connect(tmp_path)
    per_video = con.sql("SELECT count(*) FILTER (WHERE emotion = 'happy'), count(*) FROM faces WHERE usable "
                        "GROUP BY video_id").fetchnumpy()
    happy, usable = (np.asarray(per_video[c], float) for c in per_video)
    draws = np.random.default_rng(0).integers(0, len(happy), (1000, len(happy)))
    low, high = np.percentile(happy[draws].sum(1) / usable[draws].sum(1), [2.5, 97.5])
    [(videos_seen, share, got_low, got_high)] = con.sql(
        "SELECT videos, share_happy, share_happy_low, share_happy_high FROM group_summary").fetchall()
    assert videos_seen == videos and got_low < share < got_high
    width = high - low
    assert width > 0.005 and abs(got_low - low) < 0.15 * width and abs(got_high - high) < 0.15 * width
