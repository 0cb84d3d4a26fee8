"""`fervid meta`: attach a table of the user's own columns (condition, participant, ad, ...) to analysed videos.

Each CSV row names a video by `video_id`, by `path` (as analysed) or by `file` (its file name); the first of
those columns the CSV has that matches a video wins, row by row. The matched rows are kept as
RESULTS/meta/meta.parquet (every column as text, replaced whole on every call) and read by the
`video_meta` and `video_groups` views; rows that match no video, or more than one, are reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

from pipeline import query, storage
from pipeline.errors import FervidError
from pipeline.results import ResultsStore

KEYS = ("video_id", "path", "file")  # the columns that can name a video, tried in this order
RESERVED = ("folder",)  # groups fervid makes itself


@dataclass
class Attached:
    matched: int = 0
    columns: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # "line N: why", for each row not attached


def attach_meta(results_dir: str | Path, csv_path: str | Path) -> Attached:
    """Match the CSV's rows to the analysed videos and store them; returns what was matched and what not."""
    table = _read_csv(csv_path)
    keys = [k for k in KEYS if k in table.column_names]
    if not keys:
        raise FervidError(f"{csv_path} names no videos: it needs a video_id, path or file column "
                          f"(columns: {', '.join(table.column_names)})")
    columns = [c for c in table.column_names if c not in KEYS]
    bad = [c for c in columns if not re.fullmatch(r"[A-Za-z_]\w*", c) or c in RESERVED]
    if not columns or bad:
        raise FervidError(f"{csv_path}: " + (f"columns {bad} are not plain names (letters, digits, _) or are "
                                             f"reserved ({', '.join(RESERVED)})" if bad else
                                             "no columns besides video_id, path and file to attach"))
    store = ResultsStore(results_dir)
    videos = [r for r in query.latest_records(store.root).to_pylist() if r["status"] == "ok"]
    by_key = {"video_id": _index(videos, lambda r: r["video_id"]), "path": _index(videos, lambda r: r["path"]),
              "file": _index(videos, lambda r: storage.file_name(r["path"]))}
    base = Path(csv_path).resolve().parent  # a relative path in the CSV: relative to the CSV's folder
    done = Attached(columns=columns)
    rows: dict[str, dict] = {}
    for line, row in enumerate(table.to_pylist(), start=2):  # line 1 is the header
        named = [(k, row[k]) for k in keys if row[k]]
        found = next((by_key[k][v] for k, value in named for v in _spellings(k, value, base) if v in by_key[k]), None)
        if found is None:
            what = ", ".join(f"{k} {v}" for k, v in named) or "no video_id, path or file"
            done.unmatched.append(f"line {line}: {what}: no analysed video")
        elif len(found) > 1:
            done.unmatched.append(f"line {line}: {named[0][0]} {named[0][1]} names {len(found)} videos; "
                                  "name it by video_id or path")
        elif found[0] in rows:
            done.unmatched.append(f"line {line}: the video of line {rows[found[0]]['_line']} again")
        else:
            rows[found[0]] = {"video_id": found[0], "_line": line, **{c: row[c] for c in columns}}
    schema = pa.schema([("video_id", pa.string()), *[(c, pa.string()) for c in columns]])
    kept = [{k: v for k, v in r.items() if k != "_line"} for r in rows.values()]
    with store.lock():
        store.write_meta(pa.Table.from_pylist(kept, schema=schema))
    done.matched = len(kept)
    return done


def _read_csv(path: str | Path) -> pa.Table:
    """The CSV with every column as text (empty cells as null)."""
    try:
        names = pa_csv.read_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 16)).column_names
        return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True))
    except (OSError, pa.ArrowInvalid) as e:
        raise FervidError(f"cannot read {path} as CSV: {str(e).splitlines()[0]}") from None


def _spellings(key: str, value: str, base: Path) -> list[str]:
    """How a CSV cell may match: as written, and a local path also made absolute against the CSV's folder."""
    if key != "path" or storage.is_uri(value):
        return [value]
    return [value, str((base / value).resolve())]


def _index(videos: list[dict], key) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for record in videos:
        found.setdefault(key(record), []).append(record["video_id"])
    return found
