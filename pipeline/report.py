"""`fervid report`: one HTML page per analysed video and a sortable index.html, readable offline and movable.

Every number on the pages comes from the SQL views (pipeline.query), asked one video at a time, so a report
over many videos never holds more than one video's rows. Charts are plotly.js figures drawn by the
plotly.js that ships inside the plotly package, copied once into the report folder and linked relatively;
their data and layout are written as plotly.js documents them (plotly's Python figure objects validate
every point, which took most of the report's time). Jinja autoescapes everything, so file names, paths,
errors and model ids show as text.

A report folder remembers, in STATE, a key per video page: a digest of everything the page shows. The next
report into that folder draws only the pages whose key changed, so adding ten videos to a hundred thousand
costs ten pages, the index and the overview.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import duckdb
import jinja2
import numpy as np
import plotly
from pyarrow.fs import FileType

from pipeline import __version__, presentation, query, storage
from pipeline.config import CropConfig
from pipeline.crop import aligned_crops, square_crops
from pipeline.decode import read_frames
from pipeline.errors import FervidError
from pipeline.presentation import clock, emotion_colours, find_videos, labels_of, source_problem
from pipeline.progress import StatusLine, Steps
from pipeline.schema import FACE_BOX, OK, score_column

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
TEMPLATES = Path(__file__).parent / "templates"
STATE = ".fervid-report.json"  # in the report folder: video_id -> the key its page was drawn with
# the views behind a video page: video_index, video_segments, video_timeline, faces_at and the faces' people
PAGE_VIEWS = ("records.sql", "base.sql", "video_summary.sql", "timeline.sql", "emotion_segments.sql", "report.sql")
THUMB_PX = 128
MAX_POINTS = 600  # chart points per track at most: long videos get wider timeline buckets
MAX_CHARTS = 8  # tracks charted per video, the longest ones: a crowd's passers-by would bury the people who stay
DOMINANT_Y = 1.06  # height of the dominant-emotion strip above the stacked probabilities
UNUSABLE_COLOUR = "#9e9e9e"  # the strip where a track's faces were all unusable
OVERVIEW_BINS = 20  # the overview's curves: bins over the position in the videos (5% each)


@dataclass(frozen=True)
class Written:
    """What write_report did: where the index is, and how many video pages it drew, kept as they were, removed."""

    index: Path
    drawn: int
    kept: int
    removed: int


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, videos: list[str] | None = None,
                 group_by: str = "folder", full: bool = False, show_progress: bool = False) -> Written:
    """Write a page per selected video (all by default), index.html, and overview.html comparing the groups of
    all analysed videos by group_by (their folder, or a column `fervid meta` attached).

    Only the pages whose key differs from the one OUT's state recorded (or that are missing) are drawn; full
    draws every selected page. Pages of videos no longer analysed successfully are removed, whether selected
    or not; other unselected pages stay as they are. The index and the overview are always written.
    OUT defaults to a folder beside RESULTS named `<RESULTS>-report`, so the results folder stays read-only;
    results at a URI need an OUT.
    """
    root = storage.locate(results_dir)
    if not out_dir and root.remote:
        raise FervidError(f"{root.uri}: give --out DIR for the report of results at a URI")
    out = Path(out_dir) if out_dir else Path(root.path).with_name(root.name + "-report")
    con = query.connect(root)
    rows = _sql(con, "SELECT * FROM video_index")  # every video's header and coverage, in one pass
    ok = {row["video_id"] for row in rows if row["status"] == OK}
    if videos:
        chosen = {r["video_id"] for r in find_videos(con, rows, videos)}
        rows = [row for row in rows if row["video_id"] in chosen]
    labels = labels_of(con)
    colours = emotion_colours(labels)
    _check_grouping(con, group_by)
    try:
        (out / "thumbs").mkdir(parents=True, exist_ok=True)
        if not (out / PLOTLY_JS.name).is_file() or (out / PLOTLY_JS.name).stat().st_size != PLOTLY_JS.stat().st_size:
            shutil.copyfile(PLOTLY_JS, out / PLOTLY_JS.name)
    except OSError as e:
        raise FervidError(f"cannot write the report to {out}: {e.strerror}") from None
    pages = [row for row in rows if row["status"] == OK]
    people, configs = _track_people(con), _run_configs(root, pages)
    keys = page_keys(pages, people, configs, labels)
    state = _read_state(out)
    redraw = [row for row in pages if full or state.get(row["video_id"]) != keys[row["video_id"]]
              or not (out / f"{row['video_id']}.html").is_file()]
    redrawn = {row["video_id"] for row in redraw}
    gone = set(state) - ok
    # The pages about to be drawn lose their keys first: a report killed halfway draws them again next time.
    _write_state(out, {video_id: key for video_id, key in state.items() if video_id not in redrawn})
    _remove(out, gone, redrawn)
    env = _environment()
    line = StatusLine(sys.stderr, enabled=show_progress)
    for row in Steps(line, "drawing video pages", len(redraw)).track(redraw):
        page = _video_page(con, out, row, labels, colours, configs[row["run_id"]], people.get(row["video_id"], {}))
        _write(out / f"{row['video_id']}.html", env.get_template("video.html").render(colours=colours, **page))
    line.close()
    _write_state(out, {video_id: key for video_id, key in state.items() if video_id in ok} | keys)
    shown = {row["video_id"] for row in rows}
    duplicates = [d for d in _sql(con, "SELECT * FROM duplicates") if d["video_id"] in shown]
    _write(out / "overview.html", env.get_template("overview.html").render(
        colours=colours, results=root.uri, group_by=group_by, bins=OVERVIEW_BINS,
        **overview(con, group_by, labels, colours)))
    _write(out / "index.html", env.get_template("index.html").render(rows=rows, duplicates=duplicates,
                                                                     people=_people(con, shown), colours=colours,
                                                                     results=root.uri, group_by=group_by))
    return Written(out / "index.html", len(redraw), len(pages) - len(redraw), len(gone))


def _video_page(con: duckdb.DuckDBPyConnection, out: Path, video: dict, labels: list[str], colours: dict[str, str],
                config: dict, people: dict[int, dict]) -> dict:
    """Everything one video's page shows besides its index row, its run's settings and its people, read from the
    views for that video only."""
    params = {"id": video["video_id"]}
    segments = _sql(con, "SELECT * FROM video_segments($id)", **params)
    shares = sorted({s["emotion"]: s for s in segments}.values(), key=lambda s: (-s["emotion_s"], s["emotion"]))
    # Buckets as fine as the sampling, but at most MAX_POINTS over the video: a long video's page stays small.
    bucket_s = round(max(video["duration_s"] / max(video["sampled_frames"], 1), video["duration_s"] / MAX_POINTS,
                         0.001), 3)
    timeline = _sql(con, "SELECT * FROM video_timeline($id, $bucket_s)", bucket_s=bucket_s, **params)
    moments = _key_moments(con, video, labels)
    crop = CropConfig(**{"align": False, **config.get("crop", {})})  # runs from before alignment cut square crops
    missing = _thumbnails(video, moments, crop, out)
    return {"video": video, "segments": segments, "shares": shares, "moments": moments, "missing": missing,
            "config": config, "bucket_s": bucket_s, "people": people,
            **_charts(timeline, labels, colours, video["duration_s"])}


def page_keys(pages: list[dict], people: dict[str, dict[int, dict]], configs: dict[str, dict],
              labels: list[str]) -> dict[str, str]:
    """Each video page's key (see _page_key), from its video_index row, its tracks' people and its run's settings."""
    renderer = _renderer()
    return {row["video_id"]: _page_key(row, people.get(row["video_id"], {}), configs[row["run_id"]], labels, renderer)
            for row in pages}


def _run_configs(root: storage.Location, pages: list[dict]) -> dict[str, dict]:
    """Per run of the pages, the settings it recorded in runs/<run>.json, without the files it took; {} where there
    is no such file (yet: a run writes it when it ends)."""
    configs = {}
    for run_id in {row["run_id"] for row in pages}:
        run = root.child("runs", f"{run_id}.json")
        config = json.loads(storage.read_bytes(run)).get("config", {}) if storage.stat(run).type == FileType.File else {}
        config.pop("inputs", None)  # which files a run took, not how this one was analysed
        configs[run_id] = config
    return configs


def _track_people(con: duckdb.DuckDBPyConnection) -> dict[str, dict[int, dict]]:
    """Per video, the person of each of its tracks that has one (identity on), for every video in one query."""
    people: dict[str, dict[int, dict]] = {}
    for row in _sql(con, "SELECT DISTINCT video_id, track_id, person_id, person_name FROM faces "
                         "WHERE person_id IS NOT NULL AND track_id IS NOT NULL"):
        people.setdefault(row.pop("video_id"), {})[row["track_id"]] = row
    return people


def _renderer() -> str:
    """fervid's version and a digest of what draws a video page (this module, presentation, the templates, and the
    views the page reads), so a page drawn by other code is drawn again; views only the index and the overview
    read (groups, people) are left out, so changing them redraws no page."""
    digest = hashlib.blake2b(__version__.encode(), digest_size=16)
    for path in (Path(__file__), Path(presentation.__file__), *sorted(TEMPLATES.glob("*.html")),
                 *(query.SQL_DIR / name for name in PAGE_VIEWS)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _page_key(video: dict, people: dict[int, dict], config: dict, labels: list[str], renderer: str) -> str:
    """A digest of everything a video's page shows: its video_index row (its run, when it finished, its counts and
    peaks), the people of its tracks (`fervid forget` and gallery names change them without a new run), its run's
    settings, the labels, and the renderer.

    Floats are written to 12 significant digits: the views' means are summed in whatever order DuckDB's threads
    take, and a last-bit difference must not redraw a page.
    """
    row = {name: f"{value:.12g}" if isinstance(value, float) else value for name, value in video.items()}
    text = json.dumps([row, people, config, labels, renderer], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _read_state(out: Path) -> dict[str, str]:
    """The keys of the pages in OUT as the last report recorded them; none where there is no readable record."""
    try:
        return json.loads((out / STATE).read_text(encoding="utf-8"))["pages"]
    except (OSError, ValueError, KeyError):
        return {}


def _write_state(out: Path, pages: dict[str, str]) -> None:
    """Replaces the state whole (a temporary file renamed over it), so a killed report leaves the old one or the new."""
    temporary = out / f"{STATE}.tmp"
    _write(temporary, json.dumps({"pages": pages}))
    os.replace(temporary, out / STATE)


def _remove(out: Path, gone: set[str], redrawn: set[str]) -> None:
    """Deletes the pages and thumbnails of the videos gone, and the thumbnails of the pages about to be drawn again
    (a page keeps only the thumbnails it shows)."""
    for video_id in gone:
        (out / f"{video_id}.html").unlink(missing_ok=True)
    stale = gone | redrawn
    if stale:
        for thumb in (out / "thumbs").iterdir():
            if thumb.name.partition("-")[0] in stale:
                thumb.unlink()


def _check_grouping(con: duckdb.DuckDBPyConnection, group_by: str) -> None:
    known = ["folder", *(name for name in con.sql("SELECT * FROM video_meta").columns if name != "video_id")]
    if group_by not in known:
        raise FervidError(f"--group-by {group_by}: the videos can be grouped by {', '.join(known)} "
                          "(attach columns of your own with fervid meta)")


def overview(con: duckdb.DuckDBPyConnection, group_by: str, labels: list[str], colours: dict[str, str]) -> dict:
    """The groups by group_by, from group_summary and group_timeline: the table, the shares with their intervals
    (one bar per emotion and group) and each group's curves over the position in its videos."""
    groups = _sql(con, "SELECT * FROM group_summary WHERE group_by = $g", g=group_by)
    for g in groups:
        shown = [label for label in labels if g[f"share_{label}"] is not None]
        g["dominant"] = max(shown, key=lambda label: g[f"share_{label}"]) if shown else None
    names = [g["group_name"] for g in groups]
    shares = {
        "data": [{"type": "bar", "name": label, "x": names, "marker": {"color": colours[label]},
                  "y": [g[f"share_{label}"] for g in groups],
                  "error_y": {"type": "data", "symmetric": False, "color": "#444",
                              "array": [_gap(g[f"share_{label}_high"], g[f"share_{label}"]) for g in groups],
                              "arrayminus": [_gap(g[f"share_{label}"], g[f"share_{label}_low"]) for g in groups]}}
                 for label in labels],
        "layout": {"barmode": "group", "height": 360, "margin": {"l": 50, "r": 10, "t": 30, "b": 40},
                   "yaxis": {"tickformat": ".0%", "rangemode": "tozero", "gridcolor": "#eee"},
                   "legend": {"orientation": "h", "y": 1.08}},
    }
    curve_rows = _sql(con, "SELECT * FROM group_timeline($bins) WHERE group_by = $g", bins=OVERVIEW_BINS, g=group_by)
    curves = []
    for name in names:
        rows = [r for r in curve_rows if r["group_name"] == name]
        x = [(r["start_pct"] + r["end_pct"]) / 2 for r in rows]
        curves.append({
            "data": [{"type": "scatter", "mode": "lines+markers", "name": label, "x": x,
                      "y": [r[f"share_{label}"] for r in rows], "line": {"color": colours[label]}} for label in labels],
            "layout": {"height": 300, "margin": {"l": 50, "r": 10, "t": 20, "b": 40},
                       "xaxis": {"range": [0, 100], "ticksuffix": "%", "gridcolor": "#eee"},
                       "yaxis": {"range": [0, 1], "tickformat": ".0%", "gridcolor": "#eee"},
                       "legend": {"orientation": "h", "y": 1.12}},
        })
    people = _sql(con, "SELECT p.person_id, any_value(p.person_name) AS person_name, any_value(p.videos) AS videos, "
                       "list(DISTINCT g.group_name ORDER BY g.group_name) AS groups FROM people p "
                       "JOIN person_videos v USING (person_id) JOIN video_groups g ON g.video_id = v.video_id "
                       "AND g.group_by = $g GROUP BY p.person_id ORDER BY p.person_id", g=group_by)
    return {"groups": groups, "people": people, "figures": {"shares": shares, "curves": curves}}


def _gap(high: float | None, low: float | None) -> float | None:
    return None if high is None or low is None else max(high - low, 0.0)


def _people(con: duckdb.DuckDBPyConnection, shown: set[str]) -> list[dict]:
    """The people view's rows of the people in the shown videos, each with those videos (path, id)."""
    videos: dict[str, list[dict]] = {}
    for row in _sql(con, "SELECT * FROM person_videos"):
        if row["video_id"] in shown:
            videos.setdefault(row["person_id"], []).append(row)
    return [{**person, "in": videos[person["person_id"]]} for person in _sql(con, "SELECT * FROM people")
            if person["person_id"] in videos]


def _key_moments(con: duckdb.DuckDBPyConnection, video: dict, labels: list[str]) -> list[dict]:
    """Per emotion, its peak from video_summary and the face showing it (the most confident usable face then)."""
    peaks = {label: video[f"peak_{label}_s"] for label in labels if video[f"peak_{label}_s"] is not None}
    if not peaks:
        return []
    faces = _sql(con, "SELECT * FROM faces_at($id, $times)", id=video["video_id"], times=sorted(set(peaks.values())))
    moments = []
    for label, pts_s in peaks.items():
        face = max((f for f in faces if f["pts_s"] == pts_s and f["usable"]), key=lambda f: f[score_column(label)])
        moments.append({"label": label, "pts_s": pts_s, "p": video[f"peak_{label}"], "face": face,
                        "thumb": f"thumbs/{video['video_id']}-{label}.jpg", "has_thumb": False})
    return moments


def _thumbnails(video: dict, moments: list[dict], crop: CropConfig, out: Path) -> str | None:
    """Cut each key moment's face from its frame, re-decoded from the source video, as the run cut it for the
    classifier (upright, where it aligned); None, or why there are none.

    Only the peak frames are decoded. A moment whose frame cannot be decoded any more loses its thumbnail.
    """
    problem = source_problem(video["path"], video["size_bytes"])
    if problem or not moments:
        return problem
    by_frame: dict[int, list[dict]] = {}
    for moment in moments:
        by_frame.setdefault(moment["face"]["frame_index"], []).append(moment)
    try:
        path = storage.local_file(video["path"], video["video_id"])  # a remote video: fetched into the cache
        for index, frame in read_frames(path, video["decoder"], sorted(by_frame), video["rotation"]):
            chosen = by_frame[index]
            if crop.align:
                landmarks = np.array([m["face"]["landmarks"] for m in chosen], np.float32).reshape(-1, 5, 2)
                thumbs = aligned_crops(frame, landmarks, crop.margin, THUMB_PX)
            else:
                boxes = np.array([[m["face"][c] for c in FACE_BOX] for m in chosen], np.float32)
                thumbs = square_crops(frame, boxes, crop.margin, THUMB_PX)
            for moment, thumb in zip(chosen, thumbs):
                moment["has_thumb"] = cv2.imwrite(str(out / moment["thumb"]), cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))
    except Exception as e:  # decord and PyAV raise their own error types; the page says what happened
        return f"the source video could not be decoded again ({type(e).__name__}: {e})"
    return None


def _charts(timeline: list[dict], labels: list[str], colours: dict[str, str], duration_s: float) -> dict:
    """Per face track (the MAX_CHARTS seen longest), a stacked area of its emotion probabilities per timeline
    bucket, the dominant one on top; and how many tracks were left out.

    Every track spans the video's sampled buckets; where its face is absent the stack drops to zero and the
    hover says "no face"; where its faces were all unusable (quality.*) the strip on top turns grey and the
    hover says "unusable face": no emotion is shown for them.
    """
    times = sorted({row["t"] for row in timeline})
    tracks: dict[int | None, dict[float, dict]] = {}
    for row in timeline:
        if row["faces_seen"]:
            tracks.setdefault(row["track_id"], {})[row["t"]] = row
    longest = sorted(tracks, key=lambda t: -len(tracks[t]))[:MAX_CHARTS]
    layout = {
        "height": 320, "hovermode": "x unified", "margin": {"l": 50, "r": 10, "t": 40, "b": 30},
        "xaxis": {"range": [0, duration_s], "hoverformat": ".2f", "ticksuffix": " s", "gridcolor": "#eee"},
        "yaxis": {"range": [0, DOMINANT_Y + 0.04], "tickformat": ".0%", "tickvals": [0, 0.25, 0.5, 0.75, 1],
                  "gridcolor": "#eee"},
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom", "traceorder": "normal"},
    }
    charts = []
    for track_id in sorted(longest, key=lambda t: (t is None, t or 0)):
        seen = [tracks[track_id].get(t) for t in times]
        rows = [row if row and row["usable_faces"] else None for row in seen]  # the buckets with a reading
        absent = ["unusable face" if row else "no face" for row in seen]
        data = [{
            "type": "scatter", "x": times, "name": label,
            "y": [row[score_column(label)] if row else 0.0 for row in rows],
            "stackgroup": "p", "mode": "lines", "line": {"color": colours[label], "width": 0.5},
            "fillcolor": colours[label], "hovertemplate": "%{customdata}",
            "customdata": [f"{row[score_column(label)]:.1%}" if row else why for row, why in zip(rows, absent)],
        } for label in labels]
        data.append({
            "type": "scatter", "x": times, "y": [DOMINANT_Y if row else None for row in seen], "name": "dominant",
            "mode": "markers", "showlegend": False, "hovertemplate": "%{customdata}",
            "marker": {"symbol": "square", "size": 7,
                       "color": [colours[row["emotion"]] if row else UNUSABLE_COLOUR for row in rows]},
            "customdata": [row["emotion"] if row else why for row, why in zip(rows, absent)],
        })
        charts.append({"track_id": track_id, "figure": {"data": data, "layout": layout}})
    return {"charts": charts, "uncharted": len(tracks) - len(charts)}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["clock"] = clock
    env.filters["name"] = storage.file_name
    return env


def _sql(con: duckdb.DuckDBPyConnection, sql: str, **params) -> list[dict]:
    return con.sql(sql, params=params or None).to_dicts()


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise FervidError(f"cannot write {path}: {e.strerror}") from None
