"""`fervid report` and `fervid annotate` on the shared real run: the pages checked in headless Chromium
(Debian's chromium, driven by Playwright), the annotated video decoded back with PyAV."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from jobs.bench_report import fabricate
from pipeline import query
from pipeline.cli import main
from pipeline.decode import probe
from pipeline.errors import FervidError
from pipeline.presentation import emotion_colours, labels_of
from pipeline.query import latest_records
from pipeline.report import STATE, THUMB_PX, UNUSABLE_COLOUR, write_report
from pipeline.results import ResultsStore
from pipeline.schema import VIDEOS_SCHEMA

HOSTILE = "<script>alert(1)</script>.mp4"  # a folder `<script>alert(1)<` holding `script>.mp4`
BAD = "<img src=x onerror=alert(2)>.mp4"  # a text file: the failed video
FAILED_ID = "0badbadbadbadbad"


@pytest.fixture(scope="module")
def results(analysed, shared, tmp_path_factory) -> Path:
    """A copy of the shared run plus a later run's records: single_face.mp4 analysed again from a copy at
    videos/HOSTILE, noface_face.mov from a path that no longer exists, and a text file named BAD that failed."""
    root = tmp_path_factory.mktemp("report")
    copy = root / "results"
    shutil.copytree(analysed, copy)
    videos = root / "videos"
    (videos / HOSTILE).parent.mkdir(parents=True)
    shutil.copy(shared / "videos" / "single_face.mp4", videos / HOSTILE)
    (videos / BAD).write_text("not a video\n")
    with pytest.raises(FervidError) as failure:
        probe(str(videos / BAD))
    records = {Path(r["path"]).name: r for r in latest_records(copy).to_pylist()}
    now = datetime.now(timezone.utc)
    failed = {**dict.fromkeys(VIDEOS_SCHEMA.names), "video_id": FAILED_ID, "path": str(videos / BAD),
              "size_bytes": 12, "sampled_frames": 0, "faces": 0, "status": "failed", "error": str(failure.value),
              "started_at": now, "finished_at": now, "run_id": "later"}
    ResultsStore(copy).write_records("later", [
        {**records["single_face.mp4"], "path": str(videos / HOSTILE), "finished_at": now},
        {**records["noface_face.mov"], "path": str(root / "moved" / "noface_face.mov"), "finished_at": now},
        failed,
    ])
    return copy


@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pages")
    assert main(["report", str(results), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def con(results):
    return query.connect(results)


@pytest.fixture(scope="module")
def ids(results) -> dict[str, str]:
    """video_id by file name."""
    return {Path(r["path"]).name: r["video_id"] for r in latest_records(results).to_pylist()}


def test_video_page_draws_the_timeline_segments_and_key_moments(report, con, ids, open_page, tmp_path):
    video_id = ids["WolfgangLanger_Pexels.mp4"]
    page, problems = open_page(report / f"{video_id}.html")
    page.wait_for_selector("#chart-0 .main-svg")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert cv2.imread(str(tmp_path / "page.png")).shape[0] > 900

    labels = labels_of(con)
    colour = emotion_colours(labels)["happy"]
    chart = page.locator("#chart-0")
    box = chart.bounding_box()
    assert box["width"] > 500 and box["height"] > 200
    assert page.locator(".chart").count() == 1  # one face track
    fills = page.locator("#chart-0 .scatterlayer path.js-fill")
    assert fills.count() == len(labels) and all(len(d or "") > 50 for d in
                                                 [fills.nth(i).get_attribute("d") for i in range(fills.count())])
    chart.screenshot(path=str(tmp_path / "chart.png"))
    pixels = cv2.cvtColor(cv2.imread(str(tmp_path / "chart.png")), cv2.COLOR_BGR2RGB).reshape(-1, 3).astype(int)
    happy = np.abs(pixels - [int(colour[i:i + 2], 16) for i in (1, 3, 5)]).max(axis=1) < 8
    assert happy.mean() > 0.1  # the video is mostly happy: its colour fills much of the chart

    assert "Share chart..." not in chart.locator(".modebar-btn").evaluate_all("bs => bs.map(b => b.dataset.title)")
    chart.hover()  # its middle, scrolled into view
    page.wait_for_selector("#chart-0 .hoverlayer text")
    hover = page.locator("#chart-0 .hoverlayer text").all_text_contents()
    assert hover[0].endswith(" s") and 0 < float(hover[0].removesuffix(" s")) < 20
    assert {f"{label} : " for label in labels} <= {text.split(":")[0] + ": " for text in hover}
    assert any(text.startswith("dominant : ") for text in hover)

    # she looks down at times: those stretches are grey, no emotion stacked (see test_query's usable_share)
    [figure] = json.loads(page.locator("#figures").text_content())
    dominant = figure["data"][-1]
    unusable = [i for i, why in enumerate(dominant["customdata"]) if why == "unusable face"]
    assert unusable and {dominant["marker"]["color"][i] for i in unusable} == {UNUSABLE_COLOUR}
    assert all(trace["y"][i] == 0 for trace in figure["data"][:-1] for i in unusable)

    expected = con.sql("SELECT * FROM emotion_segments WHERE video_id = $id ORDER BY track_id, start_s",
                       params={"id": video_id}).to_dicts()
    shown = page.locator("#segments tbody tr").evaluate_all(
        "rows => rows.map(r => ({...r.dataset}))")
    assert [(int(r["track"]), r["emotion"], float(r["start"]), float(r["end"]), float(r["confidence"]))
            for r in shown] == [(s["track_id"], s["emotion"], s["start_s"], s["end_s"], s["mean_confidence"])
                                for s in expected]
    assert len(expected) > 2

    thumbs = page.locator(".moment img")
    assert thumbs.count() == len(labels)  # a face on every frame: every emotion has a peak
    assert thumbs.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)") == [THUMB_PX] * len(labels)
    for src in thumbs.evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))"):
        image = cv2.imread(str(report / src))
        assert image.shape == (THUMB_PX, THUMB_PX, 3) and image.std() > 10
    assert problems == []


def test_index_lists_every_video_with_failures_and_sorts(report, ids, open_page):
    page, problems = open_page(report / "index.html")
    rows = page.locator("#videos tbody tr")
    assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.videoId)")) == sorted(ids.values())
    failed = page.locator(f"tr[data-video-id='{FAILED_ID}']")
    assert "failed: not a readable video" in failed.inner_text() and failed.locator("a").count() == 0
    for href in page.locator("#videos a").evaluate_all("links => links.map(a => a.getAttribute('href'))"):
        assert (report / href).is_file()
    assert len(ids) - 1 == page.locator("#videos a").count()

    def durations() -> list[str]:
        return rows.evaluate_all("rows => rows.map(r => r.cells[2].dataset.value)")

    page.click("th:has-text('duration')")
    ascending = durations()
    assert [float(d) for d in ascending[:-1]] == sorted(float(d) for d in ascending[:-1]) and ascending[-1] == ""
    page.click("th:has-text('duration')")
    descending = durations()
    assert descending[:-1] == ascending[-2::-1] and descending[-1] == ""  # the failed video stays last
    assert problems == []


def test_hostile_file_names_show_as_text(report, ids, open_page):
    hostile_page = report / f"{ids[Path(HOSTILE).name]}.html"
    for path, scripts in ((report / "index.html", 1), (hostile_page, 3)):
        page, problems = open_page(path)
        assert page.locator("script").count() == scripts  # the index's sorting; plotly.min.js, figures, plotting
        assert problems == []  # no dialog: neither name ran as code
        if path == hostile_page:
            assert HOSTILE in page.locator("#video").inner_text()  # the path
            assert page.locator(".moment img").count() > 0  # thumbnails from the file under its odd name
        else:
            assert BAD in page.locator(f"tr[data-video-id='{FAILED_ID}']").inner_text()
            assert HOSTILE in page.locator(f"tr[data-video-id='{ids[Path(HOSTILE).name]}'] td").first.get_attribute("title")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.mp4" in hostile_page.read_text()


def test_a_moved_video_is_reported_and_the_rest_of_its_page_is_there(report, ids, open_page):
    page, problems = open_page(report / f"{ids['noface_face.mov']}.html")
    assert "no longer at" in page.locator(".note").inner_text()
    assert page.locator(".moment img").count() == 0 and page.locator(".moment .nothumb").count() > 0
    page.wait_for_selector("#chart-0 .main-svg")
    assert page.locator("#segments tbody tr").count() > 0
    assert problems == []


def test_annotate_writes_every_sampled_frame_as_h264(results, con, ids, shared, tmp_path):
    video_id, out = ids["WolfgangLanger_Pexels.mp4"], tmp_path / "annotated.mp4"
    assert main(["annotate", str(results), "--video", str(shared / "videos" / "WolfgangLanger_Pexels.mp4"),
                 "--out", str(out)]) == 0
    frames = con.sql("SELECT count(*) FROM frames WHERE video_id = $id", params={"id": video_id}).fetchall()[0][0]
    first = con.sql("SELECT * FROM faces WHERE video_id = $id ORDER BY pts_s LIMIT 1", params={"id": video_id}).to_dicts()[0]
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert stream.codec_context.name == "h264"
    assert len(decoded) == frames == 99 and decoded[0].shape == (360, 640, 3)
    colour = emotion_colours(labels_of(con))[first["emotion"]]
    x1, y1, x2, y2 = (round(first[c]) for c in ("x1", "y1", "x2", "y2"))
    edge = decoded[0][y1 - 1:y1 + 3, x1 + 10:x2 - 10].reshape(-1, 3).astype(int)  # the box's top side
    assert np.abs(edge - [int(colour[i:i + 2], 16) for i in (1, 3, 5)]).max(axis=1).mean() < 40


def test_report_and_annotate_refuse_what_they_cannot_do_in_one_line(results, ids, tmp_path, capsys):
    cases = [
        (["report", str(results), "--video", "no-such-video"], "is not the video_id, path or content"),
        (["annotate", str(results), "--video", FAILED_ID, "--out", str(tmp_path / "a.mp4")], "analysed successfully"),
        (["annotate", str(results), "--video", ids["noface_face.mov"], "--out", str(tmp_path / "a.mp4")],
         "no longer at"),
    ]
    for args, fragment in cases:
        assert main(args) == 1, args
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, lines)


def test_a_report_of_chosen_videos_from_fabricated_copies(results, tmp_path):
    """The benchmark's fabricated folder: each copy a video of its own; --video picks a few of them."""
    fabricate(results, tmp_path / "many", 12)
    con = query.connect(tmp_path / "many")
    assert con.sql("SELECT count(*) FROM videos").fetchall()[0][0] == 12
    chosen = [r[0] for r in con.sql("SELECT video_id FROM video_summary WHERE faces > 0 LIMIT 2").fetchall()]
    assert main(["report", str(tmp_path / "many"), "--video", *chosen, "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.html")) == sorted([*chosen, "index", "overview"])


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_incremental_report_equals_a_full_one(results, ids, tmp_path, capsys):
    """Reported, then changed without a new run (the woman forgotten) and by a later run in which a video failed:
    the report drawn again into the same folder is, byte for byte, the report drawn whole into a new one."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    incremental = tmp_path / "incremental"
    first = write_report(copy, incremental)
    assert (first.drawn, first.kept, first.removed) == (5, 0, 0)
    assert list((incremental / "thumbs").glob(f"{ids['face_noface.mov']}-*.jpg"))

    [(woman,)] = query.connect(copy).sql("SELECT DISTINCT person_id FROM faces JOIN videos USING (video_id) "
                                         "WHERE path LIKE '%Wolfgang%'").fetchall()
    assert main(["forget", str(copy), "--person", woman]) == 0
    [record] = [r for r in latest_records(copy).to_pylist() if r["video_id"] == ids["face_noface.mov"]]
    ResultsStore(copy).write_records("again", [{**record, "status": "failed", "error": "decoding failed",
                                                "finished_at": datetime.now(timezone.utc), "run_id": "again"}])
    second = write_report(copy, incremental)
    assert (second.drawn, second.kept, second.removed) == (1, 3, 1)
    assert main(["report", str(copy), "--out", str(tmp_path / "full"), "--full"]) == 0
    assert "4 video pages drawn, 0 unchanged, 0 removed" in capsys.readouterr().out

    full, drawn_again = folder_files(tmp_path / "full"), folder_files(incremental)
    assert sorted(drawn_again) == sorted(full)
    assert [name for name in full if drawn_again[name] != full[name]] == []
    assert f"{ids['face_noface.mov']}.html" not in full and woman not in full["index.html"].decode()
    assert not [name for name in full if name.startswith(f"thumbs/{ids['WolfgangLanger_Pexels.mp4']}-")]


def test_a_report_with_nothing_changed_draws_no_page(results, ids, tmp_path, capsys):
    out = tmp_path / "report"
    assert write_report(results, out).drawn == 5
    pages = {path.stem: path for path in out.glob("*.html") if path.stem not in ("index", "overview")}
    for page in pages.values():
        os.utime(page, ns=(0, 0))  # a page drawn again gets the current time

    again = write_report(results, out)
    assert (again.drawn, again.kept, again.removed) == (0, 5, 0)
    assert {page.stat().st_mtime_ns for page in pages.values()} == {0}

    # A selection draws the chosen pages that changed or are missing, --full all the chosen ones; the rest stay.
    hostile, woman = ids[Path(HOSTILE).name], ids["WolfgangLanger_Pexels.mp4"]
    pages[hostile].unlink()
    chosen = write_report(results, out, [hostile, woman])
    assert (chosen.drawn, chosen.kept) == (1, 1)
    assert write_report(results, out, [woman], full=True).drawn == 1
    assert {video_id for video_id, page in pages.items() if page.stat().st_mtime_ns} == {hostile, woman}

    assert main(["report", str(results), "--out", str(out), "--full"]) == 0
    assert "5 video pages drawn, 0 unchanged, 0 removed" in capsys.readouterr().out
    assert all(page.stat().st_mtime_ns for page in pages.values())
    assert set(json.loads((out / STATE).read_text())["pages"]) == set(pages)
