"""The `fervid` command. Errors the user can fix print one line and exit non-zero, no traceback."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.errors import FervidError

EXIT_ERROR, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 1, 3, 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except FervidError as e:
        print(f"fervid: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fervid: interrupted; videos already committed are kept, re-run to finish the rest", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fervid", description="Facial-emotion analysis of video folders.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="analyse a folder of videos into Parquet")
    add_run_arguments(run)
    run.set_defaults(handler=cmd_run)
    query = commands.add_parser("query", help="SQL over a results folder (views: videos, frames, faces, timeline, "
                                "video_summary, emotion_segments, transitions)")
    add_query_arguments(query)
    query.set_defaults(handler=cmd_query)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by `fervid run` and the `python -m jobs.analyze` Ray job entry point."""
    parser.add_argument("videos", help="folder of videos (searched recursively) or one video file")
    parser.add_argument("--out", required=True, help="results folder (created if missing)")
    parser.add_argument("--config", help="YAML run configuration (default: built-in production defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set sampling.fps=2 (repeatable)")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--force", action="store_true", help="redo videos already analysed with this config")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.runner import Runner

    config = load_config(args.config, args.overrides)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    summary = Runner(args.videos, args.out, config, address=args.address, force=args.force,
                     show_progress=not args.quiet).run()
    print(summary.line())
    return EXIT_SOME_FAILED if summary.counts["failed"] else 0


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results folder written by `fervid run`")
    parser.add_argument("sql", nargs="?", help='the query, e.g. "SELECT * FROM video_summary"')
    parser.add_argument("-f", "--file", help="read the query from a .sql file instead")
    parser.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table",
                        help="table (default; long results show their first and last rows), csv, json (one object "
                             "per line) or parquet (needs --output)")
    parser.add_argument("-o", "--output", help="write the result to this file instead of standard output")
    parser.add_argument("--print-views", action="store_true",
                        help="print the view definitions for this folder, to use from any DuckDB client")


def cmd_query(args: argparse.Namespace) -> int:
    from pipeline import query

    if args.print_views:
        print(query.view_sql(args.results), end="")
        return 0
    if (args.sql is None) == (args.file is None):
        raise FervidError('give one query: fervid query RESULTS "SELECT ..." or fervid query RESULTS -f FILE.sql')
    sql = args.sql
    if args.file is not None:
        try:
            with open(args.file) as f:
                sql = f.read()
        except OSError as e:
            raise FervidError(f"cannot read {args.file}: {e.strerror}") from None
    query.run_query(args.results, sql, args.format, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
