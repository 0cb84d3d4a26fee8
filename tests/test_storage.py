"""Videos and results at object-store URIs: pyarrow's real S3FileSystem and GcsFileSystem over HTTP to moto's S3
server and gcp-storage-emulator on loopback, with the real pipeline (Ray, decoders, models) on ../shared."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline import storage
from pipeline.cli import main
from pipeline.errors import FervidError
from pipeline.executor.submit import cluster_paths
from pipeline.models import file_digest
from pipeline.results import ResultsStore
from pipeline.runner import Runner, RunSummary
from tests.conftest import TEST_CONFIG
from tests.test_run import assert_same_rows, records

BUCKET = "fervid-test"
CACHE = Path(tempfile.gettempdir(), f"fervid-test-cache-{os.getpid()}")  # made by the first fetch

# Ray's workers get the environment Ray starts with (the first run of the session), so set it at import.
for name, value in (("AWS_ACCESS_KEY_ID", "fervid-test"), ("AWS_SECRET_ACCESS_KEY", "fervid-test"),
                    ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true"),
                    (storage.CACHE_DIR_ENV, str(CACHE))):
    os.environ.setdefault(name, value)


@pytest.fixture(scope="module", autouse=True)
def remove_cache() -> None:
    yield
    shutil.rmtree(CACHE, ignore_errors=True)


@pytest.fixture(scope="module")
def endpoint() -> str:
    moto_server = pytest.importorskip("moto.server", reason="moto[server], of the test extra, is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3(endpoint) -> pafs.S3FileSystem:
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    return fs


def uri(endpoint: str, key: str, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/{key}?endpoint_override={endpoint}&scheme=http"


def put(s3: pafs.S3FileSystem, key: str, data: bytes) -> None:
    with s3.open_output_stream(f"{BUCKET}/{key}") as out:
        out.write(data)


@pytest.fixture(scope="module")
def videos(shared, s3) -> str:
    """../shared/videos and one object that is no video, under videos/."""
    for video in sorted((shared / "videos").iterdir()):
        put(s3, f"videos/{video.name}", video.read_bytes())
    put(s3, "videos/broken.mp4", b"meeting notes, not a video\n" * 100)
    return "videos"


def fetched_run(videos: str, results: str, config, local: Path) -> tuple[RunSummary, Path]:
    """One run from videos into results (URIs), and everything it left there copied down for the local helpers."""
    summary = Runner(videos, results, config, show_progress=False).run()
    remote = storage.locate(results)
    for loc, _ in storage.list_files(remote):  # not pyarrow's copy_files: GCS lists no folders, so it makes none
        storage.write_bytes(local / loc.path[len(remote.path) + 1:], storage.read_bytes(loc))
    assert not [p for p in local.rglob("*") if p.name.endswith((".tmp", ".lock", ".write-test"))]
    return summary, local


def ok_ids(results: Path) -> dict[str, str]:
    """video_id by file name, of the videos analysed ok."""
    return {storage.file_name(r["path"]): r["video_id"] for r in records(results).to_pylist() if r["status"] == "ok"}


@pytest.fixture(scope="module")
def s3_run(endpoint, s3, videos, test_config, tmp_path_factory):
    return fetched_run(uri(endpoint, videos), uri(endpoint, "results"), test_config,
                       tmp_path_factory.mktemp("s3_results"))


def test_a_run_over_s3_writes_the_rows_and_ids_of_a_local_run(s3_run, analysed, endpoint):
    summary, results = s3_run
    assert summary.counts == {"ok": 5, "failed": 1, "skipped": 0}
    assert_same_rows(results, analysed, videos=5)
    assert ok_ids(results) == ok_ids(analysed)
    broken = [r for r in records(results).to_pylist() if r["status"] == "failed"]
    assert [storage.file_name(r["path"]) for r in broken] == ["broken.mp4"]
    assert "not a readable video" in broken[0]["error"]
    assert all(r["path"].startswith(f"s3://{BUCKET}/videos/") for r in records(results).to_pylist())
    run = json.loads(next((results / "runs").glob("*.json")).read_text())
    assert run["videos_dir"] == uri(endpoint, "videos")


def test_a_second_run_over_the_same_uri_skips_every_video(s3_run, endpoint, test_config):
    again = Runner(uri(endpoint, "videos"), uri(endpoint, "results"), test_config, show_progress=False).run()
    assert again.counts == {"ok": 0, "failed": 1, "skipped": 5}  # the broken object is tried again


def test_a_remote_video_into_a_local_folder_and_a_local_video_against_results_in_the_bucket(
        s3_run, analysed, endpoint, shared, test_config, tmp_path):
    local = Runner(uri(endpoint, "videos/single_face.mp4"), tmp_path / "r", test_config, show_progress=False).run()
    assert local.counts == {"ok": 1, "failed": 0, "skipped": 0}
    assert_same_rows(tmp_path / "r", analysed, videos=1)
    remote = Runner(shared / "videos" / "single_face.mp4", uri(endpoint, "results"), test_config,
                    show_progress=False).run()  # the same content as the bucket's copy, already analysed there
    assert remote.counts == {"ok": 0, "failed": 0, "skipped": 1}


def test_query_report_and_annotate_read_results_at_a_uri(s3_run, analysed, endpoint, capsys, tmp_path):
    sql = "SELECT * EXCLUDE (path) FROM video_summary ORDER BY video_id"
    answers = []
    for results in (uri(endpoint, "results"), str(analysed)):
        assert main(["query", results, sql, "--format", "json"]) == 0
        answers.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    remote, local = answers
    assert len(remote) == len(local) == 5
    for got, expected in zip(remote, local):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            same = math.isclose(got[key], value, abs_tol=1e-5) if isinstance(value, float) else got[key] == value
            assert same, (key, got[key], value)
    single = next(r["video_id"] for r in records(analysed).to_pylist() if r["path"].endswith("single_face.mp4"))
    assert main(["report", uri(endpoint, "results"), "--video", single, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / f"{single}.html").is_file()
    assert list((tmp_path / "report" / "thumbs").glob(f"{single}-*.jpg"))  # cut from the video in the bucket
    assert main(["annotate", uri(endpoint, "results"), "--video", single, "--out", str(tmp_path / "a.mp4")]) == 0
    assert (tmp_path / "a.mp4").stat().st_size > 0


def test_compacting_results_in_a_bucket_keeps_every_view(s3_run, endpoint, capsys):
    sql = "SELECT * FROM video_summary ORDER BY video_id"
    results = uri(endpoint, "results")
    answers = []
    for _ in range(2):
        assert main(["query", results, sql, "--format", "json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # floats rounded: a sum's
        # last bits follow the order DuckDB's threads add in
        answers.append([{k: round(v, 9) if isinstance(v, float) else v for k, v in row.items()} for row in rows])
        assert main(["compact", results, "--keep-replaced", "0"]) == 0
        assert "compacted:" in capsys.readouterr().out
    assert answers[0] == answers[1]
    keys = [loc.name for loc, _ in storage.list_files(storage.locate(results).child("faces"))]
    assert keys and all(key.startswith("part-") for key in keys)  # the per-video objects are deleted


def test_content_ids_are_the_same_local_and_remote_from_at_most_three_ranged_reads(shared, s3, videos, endpoint, caplog):
    for video in sorted((shared / "videos").iterdir()):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="werkzeug"):  # the S3 server's request log
            remote = file_digest(uri(endpoint, f"{videos}/{video.name}"))
        gets = [r.getMessage().rstrip() for r in caplog.records if "GET /" in r.getMessage()]
        assert 0 < len(gets) <= 3 and all(get.endswith(" 206 -") for get in gets), gets  # ranges, not the object
        assert remote == file_digest(video)


def test_the_cache_fetches_once_per_node_and_evicts_the_least_recently_used(s3, endpoint, tmp_path, monkeypatch):
    for key in ("a", "b", "c"):
        put(s3, f"cache/{key}.mp4", key.encode() * 1000)
    fetches = []
    download = storage._download
    monkeypatch.setattr(storage, "_download", lambda loc, to: fetches.append(loc.name) or download(loc, to))

    def fetch(key: str) -> str:
        return storage.local_file(uri(endpoint, f"cache/{key}.mp4"), key, tmp_path, max_bytes=2500)

    paths = []
    threads = [threading.Thread(target=lambda: paths.append(fetch("a"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fetches == ["a.mp4"] and len(set(paths)) == 1 and Path(paths[0]).read_bytes() == b"a" * 1000
    fetch("b")
    fetch("a")  # used again: now b is the least recently used
    fetch("c")
    assert fetches == ["a.mp4", "b.mp4", "c.mp4"]
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["a.mp4", "c.mp4"]
    assert storage.local_file(str(tmp_path / "a.mp4"), "a") == str(tmp_path / "a.mp4")  # local paths as they are


def test_the_results_lock_on_an_object_store(s3, endpoint, monkeypatch):
    store = ResultsStore(uri(endpoint, "locked"))
    with store.lock():
        with pytest.raises(FervidError, match="in use by another fervid run .*pid"):
            with ResultsStore(uri(endpoint, "locked")).lock():
                pass
        monkeypatch.setattr("pipeline.results.OBJECT_LOCK_EXPIRES_S", 0)  # a lock this old is taken as left behind
        with ResultsStore(uri(endpoint, "locked")).lock():
            pass
    assert s3.get_file_info(f"{BUCKET}/locked/.lock").type == pafs.FileType.NotFound


def free_endpoint() -> str:
    """HOST:PORT of a loopback port nothing listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def cli_error(capsys, *args: str) -> str:
    """The one line a fervid command that exits 1 prints."""
    assert main([*args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fervid: error: "), lines
    return lines[0]


def test_uri_problems_are_one_line_naming_the_uri(s3, videos, endpoint, capsys, monkeypatch, tmp_path):
    from moto.core.authorization import enable_iam_authentication

    error = functools.partial(cli_error, capsys)
    local = tmp_path / "results"
    unreachable = uri(free_endpoint(), "videos")
    assert f"{unreachable}: cannot reach the storage endpoint" in error("run", unreachable, "--out", str(local))
    assert "hdfs://host/videos: unsupported URI scheme" in error("query", "hdfs://host/videos", "SELECT 1")
    assert "credentials do not belong in the URI" in error("query", "s3://key:secret@bucket/results", "SELECT 1")
    storage._filesystem.cache_clear()  # a filesystem holds the credentials it was made with
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-known-key")
    with enable_iam_authentication():  # moto checks credentials from here on
        assert f"{uri(endpoint, videos)}: access denied" in error("run", uri(endpoint, videos), "--out", str(local))
    storage._filesystem.cache_clear()


def test_submit_passes_uris_through_and_makes_local_paths_absolute():
    assert cluster_paths("s3://bucket/videos?endpoint_override=h:9000", "results") == [
        "s3://bucket/videos?endpoint_override=h:9000", os.path.abspath("results")]


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory) -> tuple[str, Path]:
    """gcp-storage-emulator on loopback and its request log. In its own process: in a thread of this one, pyarrow's
    first ranged read never got an answer."""
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator, of the test extra, is not installed")
    endpoint, log = free_endpoint(), tmp_path_factory.mktemp("gcs") / "requests.log"
    host, port = endpoint.split(":")
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", host, "--port",
                                   port, "--in-memory", "--default-bucket", BUCKET], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{endpoint}/", timeout=1).close()  # its health check
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the GCS emulator did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield endpoint, log
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def gcs(gcs_server) -> pafs.GcsFileSystem:
    return pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=gcs_server[0])


def gs_uri(endpoint: str, key: str, bucket: str = BUCKET) -> str:
    """The emulator needs no credentials; a short retry limit makes an error quick (google-cloud-cpp's own: 15 min)."""
    return f"gs://anonymous@{bucket}/{key}?scheme=http&endpoint_override={endpoint}&retry_limit_seconds=1"


@pytest.fixture(params=["s3", "gs"])
def bucket_uri(request) -> Callable[..., str]:
    """(key, bucket=BUCKET) -> its URI on moto's S3 server or on the GCS emulator."""
    if request.param == "s3":
        request.getfixturevalue("s3")  # makes the bucket
        return functools.partial(uri, request.getfixturevalue("endpoint"))
    return functools.partial(gs_uri, request.getfixturevalue("gcs_server")[0])


def test_list_read_write_and_delete_through_storage(bucket_uri, tmp_path):
    root = storage.locate(bucket_uri("rw"))
    storage.write_bytes(root.child("b.bin"), b"bb")
    storage.write_bytes(root.child("a", "x.bin"), b"x" * 100)
    listed = [(loc.uri, size) for loc, size in storage.list_files(root)]
    assert listed == [(bucket_uri("rw/a/x.bin"), 100), (bucket_uri("rw/b.bin"), 2)]  # the URIs keep their options
    assert storage.list_files(bucket_uri("rw/b.bin"))[0][1] == 2 and storage.list_files(bucket_uri("rw/no")) == []
    assert storage.stat(root).type == pafs.FileType.Directory and storage.stat(bucket_uri("rw/b.bin")).size == 2
    assert storage.read_bytes(bucket_uri("rw/a/x.bin")) == b"x" * 100
    with storage.open_input(bucket_uri("rw/a/x.bin")) as f:
        assert f.read_at(3, 50) == b"xxx"
    assert Path(storage.local_file(bucket_uri("rw/b.bin"), "b", tmp_path)).read_bytes() == b"bb"
    storage.delete(bucket_uri("rw/b.bin"))
    storage.delete(bucket_uri("rw/b.bin"))  # gone already: fine
    assert [loc.name for loc, _ in storage.list_files(root)] == ["x.bin"]
    assert storage.stat(bucket_uri("rw/b.bin")).type == pafs.FileType.NotFound


def test_a_missing_bucket_is_one_line(bucket_uri, shared, capsys):
    missing = bucket_uri("results", bucket="no-such-bucket")
    assert f"{missing}: no such bucket" in cli_error(capsys, "query", missing, "SELECT 1")
    video = str(shared / "videos" / "single_face.mp4")  # input and models pass their checks; then the output fails
    assert f"{missing}: no such bucket" in cli_error(capsys, "run", video, "--out", missing, "--config", str(TEST_CONFIG))


def test_gs_problems_are_one_line_naming_the_uri(gcs_server, capsys, monkeypatch, tmp_path):
    error = functools.partial(cli_error, capsys)
    unreachable = gs_uri(free_endpoint(), "videos")
    assert f"{unreachable}: cannot reach the storage endpoint" in error("run", unreachable, "--out", str(tmp_path))
    assert "credentials do not belong in the URI" in error("query", "gs://key:secret@bucket/results", "SELECT 1")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    signed = gs_uri(gcs_server[0], "videos").replace("anonymous@", "")  # Google's default credentials, then
    assert f"{signed}: no usable credentials (GOOGLE_APPLICATION_CREDENTIALS" in error("query", signed, "SELECT 1")
    storage._filesystem.cache_clear()  # a filesystem holds the credentials it was made with


def test_gs_gives_up_on_an_unreachable_endpoint_without_a_retry_limit_in_the_uri(capsys, monkeypatch):
    monkeypatch.setattr(storage, "GCS_RETRY_LIMIT_S", 1)  # fervid's default, shortened; google-cloud-cpp's: 15 min
    storage._filesystem.cache_clear()
    unreachable = f"gs://anonymous@{BUCKET}/results?scheme=http&endpoint_override={free_endpoint()}"
    started = time.monotonic()
    assert f"{unreachable}: cannot reach the storage endpoint" in cli_error(capsys, "query", unreachable, "SELECT 1")
    assert time.monotonic() - started < 20
    storage._filesystem.cache_clear()


def test_content_ids_over_gs_are_the_local_ones(shared, gcs, gcs_server):
    endpoint, log = gcs_server
    for video in sorted((shared / "videos").iterdir()):
        put(gcs, f"ids/{video.name}", video.read_bytes())
        seen = len(log.read_text().splitlines())
        assert file_digest(gs_uri(endpoint, f"ids/{video.name}")) == file_digest(video)
        reads = [line.split()[-2] for line in log.read_text().splitlines()[seen:] if "alt=media" in line]
        # pyarrow's GcsFileSystem opens a read of the whole object with the file, then reads the ranges asked for
        assert reads[0] == "200" and 0 < len(reads[1:]) <= 3 and set(reads[1:]) == {"206"}, reads


def test_a_run_over_gs_writes_the_rows_and_ids_of_a_local_run(shared, gcs, gcs_server, analysed, test_config,
                                                              tmp_path):
    endpoint = gcs_server[0]
    put(gcs, "run/videos/single_face.mp4", (shared / "videos" / "single_face.mp4").read_bytes())
    summary, results = fetched_run(gs_uri(endpoint, "run/videos"), gs_uri(endpoint, "run/results"), test_config,
                                   tmp_path)
    assert summary.counts == {"ok": 1, "failed": 0, "skipped": 0}
    assert_same_rows(results, analysed, videos=1)
    assert ok_ids(results) == {"single_face.mp4": ok_ids(analysed)["single_face.mp4"]}
    assert records(results)["path"].to_pylist() == [gs_uri(endpoint, "run/videos/single_face.mp4")]


def test_made_once_leaves_nothing_of_a_failed_maker_and_makes_it_next_time(tmp_path):
    target = tmp_path / "model.onnx"

    def broken(part: Path) -> None:
        part.write_bytes(b"half")
        raise RuntimeError("the exporter failed")

    with pytest.raises(RuntimeError), storage.made_once(target, broken):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx.lock"]
    with storage.made_once(target, lambda part: part.write_bytes(b"whole")) as made:
        assert made == target and target.read_bytes() == b"whole"
    calls: list[Path] = []
    with storage.made_once(target, calls.append):
        assert calls == []  # found, not made again


def test_a_list_file_with_a_path_a_uri_and_a_bad_line(shared, videos, endpoint, test_config, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{shared / 'videos' / 'single_face.mp4'}\n{uri(endpoint, 'videos/no_face.mp4')}\n"
                       "# a comment\nnot/there.mp4\n")
    summary = Runner(listing, tmp_path / "r", test_config, show_progress=False).run()
    assert summary.counts == {"ok": 2, "failed": 1, "skipped": 0}
    rows = {storage.file_name(r["path"]): r for r in records(tmp_path / "r").to_pylist()}
    assert rows["no_face.mp4"]["path"] == uri(endpoint, "videos/no_face.mp4") and rows["no_face.mp4"]["status"] == "ok"
    assert rows["there.mp4"]["status"] == "failed"
    assert rows["there.mp4"]["error"] == f"listed in {listing}: not found: {tmp_path / 'not' / 'there.mp4'}"
