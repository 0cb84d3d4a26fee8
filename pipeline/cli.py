"""The `fervid` command. Errors the user can fix print one line and exit non-zero, no traceback."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pipeline.errors import FervidError

if TYPE_CHECKING:
    from pipeline.config import Config

EXIT_ERROR, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 1, 3, 130


def main(argv: list[str] | None = None) -> int:
    from pipeline.progress import Console

    parser = build_parser()
    args = parser.parse_args(argv)
    args.console = console = Console()  # `fervid run` sends everything but fervid's own lines to a log
    try:
        return args.handler(args)
    except FervidError as e:
        print(f"fervid: error: {e}", file=console.err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fervid: interrupted; videos already committed are kept, re-run to finish the rest", file=console.err)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fervid", description="Facial-emotion analysis of video folders.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, handler in (
        ("run", "analyse a folder of videos into Parquet", add_run_arguments, cmd_run),
        ("submit", "analyse a folder as a Ray job on a running cluster (Ray Job Submission API) and follow its logs",
         add_submit_arguments, cmd_submit),
        ("jobs", "status, logs or stop of a job started with fervid submit", add_jobs_arguments, cmd_jobs),
        ("query", "SQL over a results folder (views: videos, frames, faces, timeline, video_summary, "
                  "emotion_segments, transitions, tracks)", add_query_arguments, cmd_query),
        ("report", "an HTML page per analysed video and a sortable index.html", add_report_arguments, cmd_report),
        ("annotate", "a video's sampled frames with face boxes, emotions and tracks drawn on, as MP4",
         add_annotate_arguments, cmd_annotate),
        ("meta", "attach a CSV of your own columns (condition, participant, ...) to analysed videos, to group by",
         add_meta_arguments, cmd_meta),
        ("compact", "merge a results folder's small files into a few large ones (fervid run does it as it goes)",
         add_compact_arguments, cmd_compact),
        ("forget", "remove a person (faces, track embeddings, person id) or every face embedding from results",
         add_forget_arguments, cmd_forget),
        ("eval", "a classifier's accuracy on a folder of labelled face images", add_eval_arguments, cmd_eval),
        ("finetune", "fine-tune a classifier on a folder of labelled face images", add_finetune_arguments,
         cmd_finetune),
        ("bench", "throughput per stage, end to end, and against a plain sequential loop", add_bench_arguments,
         cmd_bench),
    ):
        command = commands.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(handler=handler)
    return parser


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.bench import add_bench_arguments as add

    add(parser)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.bench import run_from_args

    return run_from_args(args)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by `fervid run` and the `python -m jobs.analyze` Ray job entry point."""
    parser.add_argument("videos", help="folder of videos (searched recursively), one video file, a list of them "
                        "(LIST.txt: a path or URI per line; LIST.csv: a path column), or a URI "
                        "(s3://bucket/prefix/, gs://...)")
    parser.add_argument("--out", required=True, help="results folder (created if missing) or URI")
    parser.add_argument("--config", help="YAML run configuration (default: built-in production defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set sampling.fps=2 (repeatable)")
    parser.add_argument("--address", help="Ray cluster to join: HEAD:6379 from a node of the cluster, or "
                        "ray://HEAD:10001 (Ray Client) from anywhere, or auto for the cluster started on this machine "
                        "(default: RAY_ADDRESS, else a Ray of fervid's own)")
    add_input_arguments(parser)
    parser.add_argument("--force", action="store_true", help="redo videos already analysed with this config")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """What a run takes and whom it names, shared by run and submit."""
    for flag, what in (("include", "only videos whose path under VIDEOS matches (* crosses folders)"),
                       ("exclude", "leave out videos whose path under VIDEOS matches")):
        parser.add_argument(f"--{flag}", action="append", default=[], metavar="GLOB",
                            help=f"{what}; repeatable, added to inputs.{flag}")
    parser.add_argument("--gallery", metavar="DIR", help="name people: a folder holding a folder of photos per person "
                        "name (identity.gallery)")


def load_run_config(args: argparse.Namespace) -> Config:
    """The run configuration: --config, then --set, then --include and --exclude."""
    from pipeline.config import load_config

    config = load_config(args.config, args.overrides)
    config.inputs.include += args.include
    config.inputs.exclude += args.exclude
    if args.gallery:
        config.identity.gallery = args.gallery
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.executor import client
    from pipeline.runner import Runner
    from pipeline.schema import FAILED

    config = load_run_config(args)
    if client.over_client(args.address):
        summary = client.run_in_cluster(args.videos, args.out, config, args.address, force=args.force,
                                        show_progress=not args.quiet)
    else:
        summary = Runner(args.videos, args.out, config, address=args.address, force=args.force,
                         show_progress=not args.quiet, console=args.console).run()
    print(summary.line(), file=args.console.out)
    if summary.log and args.console.log.stat().st_size:
        print(f"Ray's, FFmpeg's and the workers' own messages: {summary.log}", file=args.console.err)
    return EXIT_SOME_FAILED if summary.counts[FAILED] else 0


JOBS_ADDRESS_HELP = ("the cluster's dashboard, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, else "
                     "RAY_ADDRESS, as for `ray job`)")


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", help="folder of videos (or one video) at a path every node of the cluster sees, "
                        "or a URI (s3://, gs://) they can reach")
    parser.add_argument("--out", required=True, help="results folder at a path every node of the cluster sees, "
                        "or a URI")
    parser.add_argument("--config", help="YAML run configuration, read and checked here; local model paths in it "
                        "must exist on every node")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set classifier.num_gpus=0.5 (repeatable)")
    parser.add_argument("--address", help=JOBS_ADDRESS_HELP)
    parser.add_argument("--force", action="store_true", help="redo videos already analysed with this config")
    add_input_arguments(parser)
    parser.add_argument("--no-follow", action="store_true", help="print the job id and return at once")


def cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.executor import submit

    config = load_run_config(args)
    with submit.jobs_api(args.address) as client:
        job_id = submit.submit(client, args.videos, args.out, config, force=args.force)
        print(job_id, flush=True)
        if args.no_follow:
            return 0
        try:
            job = submit.follow(client, job_id)
        except KeyboardInterrupt:
            print(f"fervid: stopped following; job {job_id} goes on (fervid jobs stop {job_id} stops it)",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
    print(submit.describe(job), file=sys.stderr)
    return submit.exit_code(job, EXIT_INTERRUPTED, EXIT_ERROR)


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    for action, what in (("status", "print the job's status"), ("logs", "print the job's logs"),
                         ("stop", "stop the job (videos it has committed are kept) and wait until it has")):
        sub = actions.add_parser(action, help=what)
        sub.add_argument("job_id", help="as printed by fervid submit")
        sub.add_argument("--address", help=JOBS_ADDRESS_HELP)
        if action == "logs":
            sub.add_argument("--follow", action="store_true", help="keep printing until the job ends")


def cmd_jobs(args: argparse.Namespace) -> int:
    """status and logs exit 0 when they could ask; stop exits as `fervid submit` would for the stopped job."""
    from pipeline.executor import submit

    with submit.jobs_api(args.address) as client:
        if args.action == "status":
            print(submit.describe(client.get_job_info(args.job_id)))
        elif args.action == "logs" and args.follow:
            submit.follow(client, args.job_id)
        elif args.action == "logs":
            print(client.get_job_logs(args.job_id), end="")
        else:
            job = submit.stop(client, args.job_id)
            print(submit.describe(job))
            return submit.exit_code(job, EXIT_INTERRUPTED, EXIT_ERROR)
    return 0


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results folder (or URI) written by `fervid run`")
    parser.add_argument("sql", nargs="?", help='the query, e.g. "SELECT * FROM video_summary"')
    parser.add_argument("-f", "--file", help="read the query from a .sql file instead")
    parser.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table",
                        help="table (default; long results show their first and last rows), csv, json (one object "
                             "per line) or parquet (needs --output)")
    parser.add_argument("-o", "--output", help="write the result to this file instead of standard output")
    parser.add_argument("--max-width", type=int, metavar="COLS", help="fit a table into COLS characters by "
                        "leaving columns out (default: every column, however wide)")
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
    query.run_query(args.results, sql, args.format, args.output, args.max_width)
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results folder (or URI) written by `fervid run`")
    parser.add_argument("--video", dest="videos", action="extend", nargs="+", metavar="ID_OR_PATH",
                        help="only these videos, by video_id or the path they were analysed from (default: all)")
    parser.add_argument("--out", help="folder for the report (default: RESULTS-report beside a local results "
                        "folder; results at a URI need it)")
    parser.add_argument("--group-by", default="folder", metavar="COLUMN",
                        help="overview.html compares groups of videos by their folder (default) or by a column "
                        "attached with fervid meta")
    parser.add_argument("--full", action="store_true", help="draw every video page again, not only those whose "
                        "results changed since the last report into this folder")
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

    written = write_report(args.results, args.out, args.videos, args.group_by, full=args.full,
                           show_progress=not args.quiet)
    print(f"wrote {written.index}: {written.drawn} video pages drawn, {written.kept} unchanged, "
          f"{written.removed} removed")
    return 0


def add_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results folder (or URI) written by `fervid run`")
    parser.add_argument("--video", required=True, metavar="ID_OR_PATH",
                        help="the video, by video_id or the path it was analysed from")
    parser.add_argument("--out", required=True, help="the annotated video to write (.mp4, H.264)")


def cmd_annotate(args: argparse.Namespace) -> int:
    from pipeline.annotate import annotate

    written, sampled = annotate(args.results, args.video, args.out)
    print(f"wrote {args.out}: {written} of {sampled} sampled frames")
    return 0


def add_meta_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results folder (or URI) written by `fervid run`")
    parser.add_argument("csv", help="a CSV naming each video by a video_id, path or file (name) column, plus your "
                        "own columns; replaces the table attached before")


def cmd_meta(args: argparse.Namespace) -> int:
    from pipeline.meta import attach_meta

    done = attach_meta(args.results, args.csv)
    print(f"attached {', '.join(done.columns)} to {done.matched} video{'s' * (done.matched != 1)}")
    for line in done.unmatched:
        print(f"fervid: not attached: {line}", file=sys.stderr)
    return EXIT_SOME_FAILED if done.unmatched else 0


def add_compact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results folder (or URI) written by `fervid run`")
    parser.add_argument("--keep-replaced", type=float, default=None, metavar="SECONDS",
                        help="delete replaced files only once they have been replaced this long, for queries that "
                             "listed them before (default: 600; 0 when no query is reading the results)")


def cmd_compact(args: argparse.Namespace) -> int:
    from pipeline.compact import KEEP_REPLACED_S, compact_results

    keep = KEEP_REPLACED_S if args.keep_replaced is None else args.keep_replaced
    print(compact_results(args.results, keep).line())
    return 0


def add_forget_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results folder (or URI) written by `fervid run`")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--person", metavar="ID", help="the person_id to remove (see the people view)")
    which.add_argument("--all", action="store_true", help="delete every face embedding and person id, keep emotions")


def cmd_forget(args: argparse.Namespace) -> int:
    from pipeline.forget import forget_all, forget_person

    if args.all:
        files = forget_all(args.results)
        print(f"deleted {files} face-embedding file{'s' * (files != 1)} and every person id")
        return 0
    gone = forget_person(args.results, args.person)
    print(f"forgot {args.person}: {gone.faces} faces and {gone.tracks} track embedding{'s' * (gone.tracks != 1)} "
          f"in {gone.videos} video{'s' * (gone.videos != 1)}")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", help="folder with one sub-folder of images per label (names as in the model's "
                        "id2label, any case)")
    parser.add_argument("--model", required=True, help="classifier: hub id or local save_pretrained folder")
    parser.add_argument("--json", help="also write the full report (per-label figures, confusion matrix) here")
    parser.add_argument("--filter", metavar="GLOB", help="only image files whose name matches, e.g. 'PublicTest_*'")
    parser.add_argument("--ignore-missing", action="store_true",
                        help="skip folders that are no label of the model, and labels that have no folder")
    parser.add_argument("--config", help="YAML run configuration whose classifier settings (batch size, device, "
                        "actors, dtype) to use")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set classifier.batch_size=256 (repeatable)")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--fit-temperature", action="store_true",
                        help="fit one softmax temperature to these labels (minimising cross-entropy) and write it "
                             "beside a local model's weights (temperature.json), where fervid run applies it")


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from pipeline import evaluate
    from pipeline.config import load_config

    config = load_config(args.config, args.overrides)
    classifier = dataclasses.replace(config.classifier, model=args.model)
    report = evaluate.evaluate(args.images, classifier, args.filter, args.ignore_missing, args.address,
                               fit=args.fit_temperature)
    print(evaluate.format_report(report))
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        except OSError as e:
            raise FervidError(f"cannot write {args.json}: {e.strerror}") from None
    return 0


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.finetune import SCHEDULERS, Recipe

    r = Recipe()
    parser.add_argument("train", help="folder with one sub-folder of images per label; the folder names become "
                        "the model's labels")
    parser.add_argument("--out", required=True, help="folder for the fine-tuned model (new or empty, or one with a "
                        "checkpoint to resume)")
    parser.add_argument("--base", default=r.base, help="model to start from: hub id or save_pretrained folder "
                        "(default: %(default)s)")
    parser.add_argument("--eval-dir", help="labelled folder to evaluate on (same label folders as the training set)")
    parser.add_argument("--filter", metavar="GLOB", help="only training files whose name matches")
    parser.add_argument("--eval-filter", metavar="GLOB", help="only evaluation files whose name matches")
    recipe = parser.add_argument_group("recipe (defaults: the trpakov/vit-face-expression model card)")
    for flag, kind, what in (
            ("lr", float, "peak learning rate"), ("batch-size", int, "images per micro-batch"),
            ("grad-accum", int, "micro-batches per optimiser step"), ("adam-beta1", float, "Adam beta1"),
            ("adam-beta2", float, "Adam beta2"), ("adam-eps", float, "Adam epsilon"),
            ("weight-decay", float, "decoupled weight decay (0: plain Adam)"),
            ("max-grad-norm", float, "gradient clipping norm (0: none)"),
            ("warmup-steps", int, "learning-rate warm-up steps"), ("epochs", int, "passes over the training set"),
            ("max-steps", int, "stop after this many optimiser steps (0: epochs decide)"),
            ("seed", int, "seed for the new head, shuffling and augmentation"),
            ("rotation", float, "random rotation, degrees either way"),
            ("flip", float, "probability of a horizontal flip"), ("zoom", float, "random zoom within 1 +- this"),
            ("eval-steps", int, "evaluate and log every N optimiser steps (0: every epoch)"),
            ("save-steps", int, "checkpoint every N optimiser steps")):
        default = getattr(r, flag.replace("-", "_"))
        recipe.add_argument(f"--{flag}", type=kind, default=default, help=f"{what} (default: %(default)s)")
    recipe.add_argument("--scheduler", choices=SCHEDULERS, default=r.scheduler, help="(default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="image loading processes (default: %(default)s)")
    parser.add_argument("--train-workers", type=int, help="data-parallel training processes under Ray Train, a GPU "
                        "each where there are GPUs (default: one per GPU of the Ray cluster at --address, else of "
                        "this machine; 1: a plain torch loop in this process)")
    parser.add_argument("--address", help="Ray cluster to train on (default: RAY_ADDRESS, else a local Ray)")


def cmd_finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from pipeline.finetune import Recipe, finetune

    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    summary = finetune(args.train, args.out, recipe, eval_dir=args.eval_dir, device=args.device,
                       workers=args.workers, train_workers=args.train_workers, address=args.address,
                       log=lambda line: print(line, flush=True))
    final = summary["final_eval"]
    print(f"wrote {args.out}: {summary['steps']} steps in {summary['wall_s']:.0f}s"
          + (f", accuracy {final['accuracy']:.4f} on {final['images']} images" if final else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
