"""SQL over a RESULTS folder: the views in sql/, written out for the model's labels, on DuckDB.

The views are plain SQL files so users can read and reuse them; the only templating is where the
Parquet files are and the labels, which follow the `p_<label>` columns actually in the files.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from pipeline import schema, storage
from pipeline.errors import FervidError

_PACKAGE = Path(__file__).resolve().parent
# pipeline/sql in an installed wheel (pyproject maps the repository's sql/ there), sql/ beside it in a checkout
SQL_DIR = _PACKAGE / "sql" if (_PACKAGE / "sql").is_dir() else _PACKAGE.parent / "sql"
RECORD_FILES = ("records.sql",)  # needs only the videos table
VIEW_FILES = (*RECORD_FILES, "base.sql", "timeline.sql", "video_summary.sql", "emotion_segments.sql",
              "transitions.sql", "tracks.sql", "people.sql", "groups.sql", "report.sql")
# The tables the views read (not `tracks`: embeddings stay out of SQL); `people` may not exist yet
TABLE_FILES = {"videos": "videos/*.parquet", "frames": "frames/*/*.parquet", "faces": "faces/*/*.parquet",
               "people": "people/*.parquet", "meta": "meta/*.parquet"}
# folders from a table to its small files (a table's parts lie at its top, as part-<id>.parquet)
TABLE_DEPTH = {"videos": 0, "frames": 1, "faces": 1, "tracks": 1, "people": 0, "meta": 0}
PART_PREFIX = "part-"
PART_KEY = b"fervid.part"  # a part's footer: JSON with the files it replaces and when it was written
# read as empty where absent: people (identity off, or not run yet), meta (no `fervid meta` yet)
OPTIONAL_TABLES = {"people": schema.PEOPLE_SCHEMA, "meta": pa.schema([("video_id", pa.string())])}
DICTIONARY_COLUMNS = ("run_id", "emotion")
# Columns newer than some results folders: files without them read as NULL, so the views work over old runs too
ADDED_COLUMNS = {"faces": pa.schema([*schema.FACE_QUALITY, ("usable", pa.bool_())]),
                 "frames": pa.schema([("det_size", pa.int16())]),
                 "videos": pa.schema([("folder", pa.string()), ("det_size", pa.int16())])}
UNLIMITED_WIDTH = 1 << 20  # characters: a table this wide shows every column


def connect(results_dir: str | Path | storage.Location) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with every view over RESULTS (a folder or an object-store URI), for notebooks
    and `fervid query`.

    Read-only: DuckDB gets the Parquet as Arrow datasets (read by pyarrow, which is handed the
    columns and the video_id filter, so it opens only those files) and no file access of its own,
    locked, so COPY, EXPORT, ATTACH, read_csv and the like fail instead of touching any file.
    The file list is a snapshot: connect again to see later runs.
    """
    root, files = _results(results_dir)
    datasets = {table: table_datasets(root, table, paths) for table, paths in files.items()}
    con = duckdb.connect()
    sources = {table: register_table(con, table, table_datasets) for table, table_datasets in datasets.items()}
    con.execute(_render_views(sources, _labels(datasets["faces"][0]), _meta_columns(datasets["meta"][0])))
    # Every view starts from latest_records, which ranks every record: kept as a table for the connection's
    # life (its file list is a snapshot anyway), a filter on one video does not rank 100,000 records again.
    con.execute("CREATE TABLE latest_records_snapshot AS FROM latest_records; "
                "CREATE OR REPLACE VIEW latest_records AS FROM latest_records_snapshot")
    _lock(con)
    return con


def latest_records(results_dir: str | Path | storage.Location) -> pa.Table:
    """The `latest_records` view (each video's record that counts, ok or failed) over RESULTS' videos table
    alone, so it works before any video has been analysed; reads only."""
    root = storage.locate(results_dir)
    files = table_files(root, "videos")
    if not files:
        return schema.VIDEOS_SCHEMA.empty_table()
    con = duckdb.connect()
    con.execute(_render_views({"videos": register_table(con, "videos", table_datasets(root, "videos", files))}, [],
                              files=RECORD_FILES))
    _lock(con)
    return con.sql("SELECT * FROM latest_records").to_arrow_table()


def _lock(con: duckdb.DuckDBPyConnection) -> None:
    """No file access for SQL run on con: COPY, EXPORT, ATTACH, read_csv and the like fail."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def view_sql(results_dir: str | Path) -> str:
    """The view definitions for RESULTS as plain SQL reading its Parquet directly, for any DuckDB client."""
    root, files = _results(results_dir)
    if root.remote:
        raise FervidError(f"{root.uri}: --print-views needs a local results folder (the views read files by path)")
    sources = {}
    for table, pattern in TABLE_FILES.items():
        if table in OPTIONAL_TABLES and not files[table]:
            sources[table] = _empty_relation(OPTIONAL_TABLES[table])
            continue
        small = [loc.path for loc in files[table] if not is_part(loc)]
        parts = [loc.path for loc in files[table] if is_part(loc)]
        hive = ", hive_partitioning = true, hive_types = {'video_id': VARCHAR}" if TABLE_DEPTH[table] else ""
        if not parts:  # nothing compacted, so nothing replaced: a glob, which sees later runs too
            sources[table] = f"read_parquet({_sql_text(str(Path(root.path, pattern)))}{hive}, union_by_name = true)"
            continue
        reads = [f"FROM read_parquet({_sql_list(small)}{hive}, union_by_name = true)"] if small else []
        reads += [f"FROM read_parquet({_sql_list(parts)}, union_by_name = true)"] if parts else []
        sources[table] = "(" + " UNION ALL BY NAME ".join(reads) + ")"
    return _render_views(sources, _labels(table_datasets(root, "faces", files["faces"])[0]),
                         _meta_columns(table_datasets(root, "meta", files["meta"])[0]))


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join(_sql_text(path) for path in paths) + "]"


def run_query(results_dir: str | Path, sql: str, fmt: str = "table", output: str | Path | None = None,
              max_width: int | None = None) -> None:
    """Run SQL (one or more statements; the last one's rows are the result) and print or save the result.

    A table shows every column (wider than the terminal if need be) unless max_width asks DuckDB to fit it
    into that many characters by leaving columns out.
    """
    root = storage.locate(results_dir)
    if output is not None and not root.remote and Path(output).resolve().is_relative_to(Path(root.path).resolve()):
        raise FervidError(f"--output {output} is inside the results folder; fervid query never writes there")
    if fmt == "parquet" and output is None:
        raise FervidError("--format parquet needs --output FILE")
    con = connect(root)
    try:
        relation = con.sql(sql)
        if relation is None:
            return
        result = _table_text(relation, max_width) if fmt == "table" else relation.to_arrow_table()
    except duckdb.Error as e:
        raise FervidError(f"query failed: {_headline(e)}") from None
    try:
        if fmt == "parquet":
            pq.write_table(result, output)
        else:
            _emit(_encode(result, fmt), output)
    except OSError as e:
        raise FervidError(f"cannot write {output}: {e.strerror or e}") from None


def _table_text(relation: duckdb.DuckDBPyRelation, max_width: int | None) -> str:
    """DuckDB's box table of the relation: all columns, or as many as fit into max_width characters."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # show() prints; its text is wanted for --output too
        relation.show(max_width=max_width or UNLIMITED_WIDTH)
    return text.getvalue().rstrip("\n") + "\n"


def _render_views(sources: dict[str, str], labels: list[str], meta: list[str] = (),
                  files: tuple[str, ...] = VIEW_FILES) -> str:
    """sql/*.sql with the {<table>_files} sources, {labels}, and the lines holding {label} (or {meta}) written
    once per label (or column of `fervid meta`'s table) filled in (comment lines are kept as written)."""
    values = {"{labels}": ", ".join(f"'{label}'" for label in labels),
              **{f"{{{table}_files}}": source for table, source in sources.items()}}
    parts = []
    for name in files:
        lines = []
        for line in (SQL_DIR / name).read_text().splitlines():
            if line.lstrip().startswith("--"):
                lines.append(line)
                continue
            for placeholder, value in values.items():
                line = line.replace(placeholder, value)
            if "{label}" in line:
                lines += [line.replace("{label}", label) for label in labels]
            elif "{meta}" in line:
                lines += [line.replace("{meta}", column) for column in meta]
            else:
                lines.append(line)
        parts.append(f"-- sql/{name}\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _results(results_dir: str | Path | storage.Location) -> tuple[storage.Location, dict[str, list[storage.Location]]]:
    """The RESULTS folder and its tables' files, checked to hold analysed videos, so an empty one fails in one
    clear line."""
    root = storage.locate(results_dir)
    if storage.stat(root).type != FileType.Directory:
        raise FervidError(f"results folder {root.uri} does not exist")
    files = {table: table_files(root, table) for table in TABLE_FILES}
    if not files["videos"]:
        raise FervidError(f"{root.uri} holds no fervid results (no videos/*.parquet); "
                          f"run `fervid run VIDEOS --out {root.uri}`")
    if not files["faces"] or not files["frames"]:
        raise FervidError(f"no video in {root.uri} has been analysed successfully yet")
    return root, files


def _empty_relation(table_schema: pa.Schema) -> str:
    """SQL for a table with the schema's columns and no rows."""
    types = {pa.string(): "VARCHAR", pa.int32(): "INTEGER"}
    columns = ", ".join(f"NULL::{types[f.type]} AS {f.name}" for f in table_schema)
    return f"(SELECT {columns} WHERE false)"


def table_files(root: storage.Location, table: str) -> list[storage.Location]:
    """A table's visible Parquet files: its small files (one per video and run, or per commit of records) and
    its parts (pipeline/compact.py), less every file some listed part replaces, so each row is counted once
    whether the listing came before, during or after a compaction. In-progress `*.parquet.tmp` are left out."""
    base = root.child(table)
    listed = [loc for loc, _ in storage.list_files(base) if loc.name.endswith(".parquet")]
    small = [loc for loc in listed if _depth(base, loc) == TABLE_DEPTH[table] and not is_part(loc)]
    parts = [loc for loc in listed if _depth(base, loc) == 0 and is_part(loc)]
    replaced = {name for part in parts for name in part_info(part).replaces}
    return [loc for loc in small + parts if relative_name(base, loc) not in replaced]


def _depth(base: storage.Location, loc: storage.Location) -> int:
    return relative_name(base, loc).count("/")


def relative_name(base: storage.Location, loc: storage.Location) -> str:
    """A file's path below its table folder: how a part names the files it replaces."""
    return loc.path[len(base.path) + 1:]


def is_part(loc: storage.Location) -> bool:
    return loc.name.startswith(PART_PREFIX)


@dataclass(frozen=True)
class PartInfo:
    replaces: tuple[str, ...]  # the files whose rows it holds, relative to its table folder
    written_at: float  # seconds since the epoch
    rows: int


def part_info(part: storage.Location) -> PartInfo:
    """What a part's footer says of it (one small read: Parquet keeps it at the end of the file)."""
    with storage.open_input(part) as f:
        metadata = pq.read_metadata(f)
    info = json.loads(metadata.metadata[PART_KEY])
    return PartInfo(tuple(info["replaces"]), info["written_at"], metadata.num_rows)


def table_datasets(root: storage.Location, table: str, files: list[storage.Location]) -> list[ds.Dataset]:
    """A table's files as Arrow datasets: one of its small files, one of its parts, where there are any.

    The schema is the union over runs and parts (one file per name is enough: a run writes one schema) and
    ADDED_COLUMNS, so runs with different models' labels, and runs from before a column existed, read
    together, with NULL where a file lacks a column.
    Strings with few values (video_id, run_id, emotion) arrive dictionary-encoded, which DuckDB
    joins and groups on several times faster than plain strings. A per-video table's small files take
    video_id from their folder (video_id=<id>), its parts hold it as a column, sorted, so a filter on one
    video skips all but a row group or two.
    """
    if not files and table in OPTIONAL_TABLES:
        return [ds.dataset(OPTIONAL_TABLES[table].empty_table())]
    one_per_name = {loc.name.split(".")[0]: loc for loc in files}.values()
    added = [ADDED_COLUMNS[table]] if table in ADDED_COLUMNS else []
    schema = pa.unify_schemas([storage.read_schema(loc).remove_metadata() for loc in one_per_name] + added)
    if TABLE_DEPTH[table] == 0:
        return [ds.dataset([loc.path for loc in files], schema=schema, format="parquet", filesystem=root.fs)]
    codes = pa.dictionary(pa.int32(), pa.string())
    schema = pa.schema([f.with_type(codes) if f.name in DICTIONARY_COLUMNS else f
                        for f in schema if f.name != "video_id"])
    read_options = ds.ParquetReadOptions(dictionary_columns=[c for c in DICTIONARY_COLUMNS if c in schema.names])
    file_format = ds.ParquetFileFormat(read_options=read_options)
    small = [loc.path for loc in files if not is_part(loc)]
    parts = [loc.path for loc in files if is_part(loc)]
    datasets = []
    if small:
        video_ids = sorted({PurePosixPath(path).parent.name.removeprefix("video_id=") for path in small})
        partitioning = ds.HivePartitioning(pa.schema([("video_id", codes)]),
                                           dictionaries={"video_id": pa.array(video_ids)})
        datasets.append(ds.dataset(small, schema=schema.append(pa.field("video_id", codes)), filesystem=root.fs,
                                   format=file_format, partitioning=partitioning,
                                   partition_base_dir=root.child(table).path))
    if parts:
        datasets.append(ds.dataset(parts, schema=schema.append(pa.field("video_id", pa.string())),
                                   filesystem=root.fs, format=file_format))
    return datasets


def register_table(con: duckdb.DuckDBPyConnection, table: str, datasets: list[ds.Dataset]) -> str:
    """Registers a table's datasets on con; the SQL that reads them as one relation."""
    names = []
    for i, dataset in enumerate(datasets):
        names.append(f"{table}_files" + (f"_{i}" if i else ""))
        con.register(names[-1], dataset)
    return names[0] if len(names) == 1 else "(" + " UNION ALL BY NAME ".join(f"FROM {n}" for n in names) + ")"


def read_rows(results_dir: str | Path | storage.Location, table: str) -> pa.Table:
    """Every visible row of one table (with video_id), for the writers that need a table whole (people)."""
    root = storage.locate(results_dir)
    files = table_files(root, table)
    if not files:
        return pa.table({})
    con = duckdb.connect()
    source = register_table(con, table, table_datasets(root, table, files))
    return con.sql(f"SELECT * FROM {source}").to_arrow_table()


def _meta_columns(meta: ds.Dataset) -> list[str]:
    """The user's columns of `fervid meta`'s table (plain names: fervid meta refuses others)."""
    return [name for name in meta.schema.names if name != "video_id"]


def _labels(faces: ds.Dataset) -> list[str]:
    """The labels of the faces table's score columns, in the model's order, checked to name SQL columns."""
    labels = schema.labels_of(faces.schema.names)
    odd = schema.unnamable_labels(labels)
    if odd:
        raise FervidError(f"labels {odd} are not plain names (letters, digits, _); the views cannot name their columns")
    return labels


def _encode(result: str | pa.Table, fmt: str) -> bytes:
    """The result as table text, CSV or JSON Lines (one object per row)."""
    if fmt == "table":
        return result.encode()
    if fmt == "json":
        return "".join(json.dumps(row, default=str) + "\n" for row in result.to_pylist()).encode()
    nested = [f.name for f in result.schema if pa.types.is_nested(f.type)]
    if nested:
        raise FervidError(f"CSV cannot hold the list column(s) {', '.join(nested)}; "
                          "leave them out or use --format json")
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(result, sink)
    return sink.getvalue().to_pybytes()


def _emit(data: bytes, output: str | Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(output).write_bytes(data)


def _headline(error: duckdb.Error) -> str:
    """DuckDB's first line ("Binder Error: Referenced column ... not found"); the rest is context."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
