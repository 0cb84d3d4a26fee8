"""What the report and the annotated video share: one colour per emotion, clock times, and finding the
analysed videos and their source files again."""

from __future__ import annotations

import duckdb
from pyarrow.fs import FileType

from pipeline import schema, storage
from pipeline.errors import FervidError
from pipeline.models import file_digest

# One colour per emotion, the same in every chart, table and annotated video; other labels take the palette in order.
KNOWN_COLOURS = {
    "angry": "#d62728", "disgust": "#6b8e23", "fear": "#9467bd", "happy": "#f2b400", "neutral": "#9e9e9e",
    "sad": "#1f77b4", "surprise": "#ff7f0e", "contempt": "#8c564b",
}
OTHER_COLOURS = ("#17becf", "#e377c2", "#2ca02c", "#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939")


def find_videos(con: duckdb.DuckDBPyConnection, records: list[dict], wanted: list[str],
                among: str = "the results") -> list[dict]:
    """The records named by video id, by the path they were analysed from, by a path skipped as a duplicate of
    them, or by any file whose content they are; in the order asked for."""
    aliases = dict(con.sql("SELECT duplicate_path, video_id FROM duplicates").fetchall())
    found = []
    for name in wanted:
        path = storage.locate(name).uri  # as fervid run records it
        ids = {name, aliases.get(path), _content_id(path)}
        match = [r for r in records if r["video_id"] in ids or path == r["path"]]
        if not match:
            raise FervidError(f"{name!r} is not the video_id, path or content of any of {among}")
        found += match
    return found


def _content_id(path: str) -> str | None:
    """The content id of the file at path, as `fervid run` computes it; None where there is no such file."""
    try:
        return file_digest(path) if storage.stat(path).type == FileType.File else None
    except (OSError, FervidError):
        return None


def labels_of(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The model's labels in its order, as the faces view holds them."""
    return schema.labels_of(con.sql("SELECT * FROM faces LIMIT 0").columns)


def emotion_colours(labels: list[str]) -> dict[str, str]:
    """Label -> hex colour: the fixed colours for the usual emotions, the rest from a palette in label order."""
    others = iter(OTHER_COLOURS * (len(labels) // len(OTHER_COLOURS) + 1))
    return {label: KNOWN_COLOURS.get(label) or next(others) for label in labels}


def source_problem(path: str, size_bytes: int) -> str | None:
    """Why the source video cannot be shown again (gone or replaced), or None when it is still there."""
    try:
        info = storage.stat(path)
    except FervidError as e:  # a store that cannot be reached
        return str(e)
    if info.type != FileType.File:
        return f"the source video is no longer at {path}"
    if info.size != size_bytes:
        return f"the file at {path} has changed since it was analysed"
    return None


def clock(seconds: float | None) -> str:
    """Seconds as m:ss.s (h:mm:ss.s past an hour), as a video player shows time."""
    if seconds is None:
        return ""
    minutes, s = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{s:04.1f}" if hours else f"{minutes}:{s:04.1f}"
