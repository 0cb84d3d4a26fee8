"""Benchmark: `fervid report` over many videos, with its wall time and the process's peak memory.

    python -m jobs.bench_report RESULTS [--videos 100] [--changed 10] [--keep DIR]    copies of a real run's videos
    python -m jobs.bench_report --frames 5000 [--videos 100] [--changed 10]          synthetic videos, sources absent

With RESULTS, each fabricated video is a copy of one of its analysed videos' partitions under a new
video_id, pointing at the same source file, so the key-moment thumbnails are really decoded. With
--frames, the videos are jobs.bench_query's synthetic ones (a face on every frame), whose source files
do not exist: the pages say so, and the time is the views, the charts and the HTML alone.

The first report draws every page; it is followed by a report into the same folder with nothing changed
(the index and the overview alone), and, unless --changed 0, one after a later run recorded CHANGED of the
videos again, which draws their pages. With --assume-drawn the first report is left out (at a quarter of
a second per page it would take 7 hours at 100,000 videos): every page is recorded as drawn instead, with
the key a report gives it and an empty file for its HTML, so the later reports time what a report costs
when the pages are current.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from jobs.bench_query import write_synthetic
from pipeline import query, report, storage
from pipeline.presentation import labels_of
from pipeline.query import latest_records
from pipeline.report import Written, write_report
from pipeline.results import ResultsStore


def fabricate(source: Path, root: Path, videos: int) -> None:
    """A RESULTS folder of `videos` videos, copied round-robin from the ok videos of SOURCE (a folder of a few
    videos, whose files are per video: not compacted)."""
    originals = [r for r in latest_records(source).to_pylist() if r["status"] == "ok"]
    store = ResultsStore(root)
    copies = []
    for i in range(videos):
        record = originals[i % len(originals)]
        copy = {**record, "video_id": f"{i:04x}{record['video_id'][4:]}"}
        for table in ("faces", "frames"):
            target = root / table / f"video_id={copy['video_id']}" / f"{record['run_id']}.parquet"
            target.parent.mkdir(parents=True)
            shutil.copyfile(source / table / f"video_id={record['video_id']}" / target.name, target)
        copies.append(copy)
    store.write_records("bench", copies)
    for run in (source / "runs").glob("*.json"):
        shutil.copyfile(run, root / "runs" / run.name)


def record_again(root: Path, videos: int) -> None:
    """A later run's records for the first `videos` ok videos, as if analysed again with the same outcome (as the
    tests' fixtures do): their pages' keys change, the others' do not."""
    records = [r for r in latest_records(root).to_pylist() if r["status"] == "ok"][:videos]
    now = datetime.now(timezone.utc)
    ResultsStore(root).write_records("bench-again", [{**record, "finished_at": now} for record in records])


def assume_drawn(results: Path, out: Path) -> int:
    """Every ok video's page recorded in OUT's state as a report would record it, with an empty page file."""
    con = query.connect(results)
    pages = con.sql("SELECT * FROM video_index WHERE status = 'ok'").to_dicts()
    keys = report.page_keys(pages, report._track_people(con), report._run_configs(storage.locate(results), pages),
                            labels_of(con))
    out.mkdir(parents=True, exist_ok=True)
    for video_id in keys:
        (out / f"{video_id}.html").touch()
    report._write_state(out, keys)
    return len(keys)


def timed_report(root: Path) -> tuple[Written, float]:
    started = time.perf_counter()
    written = write_report(root / "results", root / "report")
    return written, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", help="a real RESULTS folder to copy videos from")
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--frames", type=int, help="synthetic videos of this many sampled frames instead")
    parser.add_argument("--changed", type=int, default=10,
                        help="videos recorded again before the third report (0: no third report)")
    parser.add_argument("--keep", help="write the fabricated RESULTS and the report here (default: a temp folder)")
    parser.add_argument("--assume-drawn", action="store_true",
                        help="no first report: record every page as drawn (see above)")
    args = parser.parse_args()
    if (args.results is None) == (args.frames is None):
        parser.error("give either RESULTS or --frames")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        if args.frames:
            write_synthetic(root / "results", args.videos, args.frames, commits=1000)
        else:
            fabricate(Path(args.results), root / "results", args.videos)
        if args.assume_drawn:
            print(f"no first report: {assume_drawn(root / 'results', root / 'report')} pages recorded as drawn")
        else:
            before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            written, wall_s = timed_report(root)
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            thumbs = len(list((root / "report" / "thumbs").glob("*.jpg")))
            size_mib = sum(p.stat().st_size for p in (root / "report").rglob("*") if p.is_file()) / 2**20
            print(f"{written.drawn} video pages, {thumbs} thumbnails, {size_mib:.1f} MiB (plotly.min.js included) "
                  f"in {wall_s:.1f}s ({wall_s / max(written.drawn, 1) * 1000:.0f} ms per video); "
                  f"peak RSS {peak_mib:.0f} MiB ({before_mib:.0f} MiB before the report)")
        written, wall_s = timed_report(root)
        print(f"again, nothing changed: {written.drawn} pages drawn, {written.kept} kept, in {wall_s:.1f}s")
        if args.changed:
            record_again(root / "results", args.changed)
            written, wall_s = timed_report(root)
            print(f"again, {args.changed} videos recorded again: {written.drawn} pages drawn, {written.kept} kept, "
                  f"in {wall_s:.1f}s")


if __name__ == "__main__":
    main()
