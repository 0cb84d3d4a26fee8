"""Videos and results at object-store URIs: pyarrow's real S3FileSystem over HTTP to moto's S3 server on
loopback, with the real pipeline (Ray, decoders, models) on ../shared."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline import storage
from pipeline.cli import main
from pipeline.errors import FervidError
from pipeline.models import file_digest
from pipeline.results import ResultsStore
from pipeline.runner import Runner
from pipeline.submit import cluster_paths
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


@pytest.fixture(scope="module")
def s3_run(endpoint, s3, videos, test_config, tmp_path_factory):
    """One run from the bucket into the bucket, and its results copied down for the local helpers."""
    summary = Runner(uri(endpoint, videos), uri(endpoint, "results"), test_config, show_progress=False).run()
    local = tmp_path_factory.mktemp("s3_results")
    pafs.copy_files(f"{BUCKET}/results", str(local), source_filesystem=s3)
    return summary, local


def test_a_run_over_s3_writes_the_rows_and_ids_of_a_local_run(s3_run, analysed, s3, endpoint):
    summary, results = s3_run
    assert summary.counts == {"ok": 5, "failed": 1, "skipped": 0}
    assert_same_rows(results, analysed, videos=5)
    ids = {storage.file_name(r["path"]): r["video_id"] for r in records(results).to_pylist() if r["status"] == "ok"}
    assert ids == {Path(r["path"]).name: r["video_id"] for r in records(analysed).to_pylist()}
    broken = [r for r in records(results).to_pylist() if r["status"] == "failed"]
    assert [storage.file_name(r["path"]) for r in broken] == ["broken.mp4"]
    assert "not a readable video" in broken[0]["error"]
    assert all(r["path"].startswith(f"s3://{BUCKET}/videos/") for r in records(results).to_pylist())
    left = [f.path for f in s3.get_file_info(pafs.FileSelector(f"{BUCKET}/results", recursive=True))]
    assert not [p for p in left if p.endswith((".tmp", ".lock", ".write-test"))]
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


def test_uri_problems_are_one_line_naming_the_uri(s3, videos, endpoint, capsys, monkeypatch, tmp_path):
    from moto.core.authorization import enable_iam_authentication

    def error(*args: str) -> str:
        assert main([*args]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fervid: error: "), lines
        return lines[0]

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    missing, local = uri(endpoint, "results", bucket="no-such-bucket"), tmp_path / "results"
    assert f"{missing}: no such bucket" in error("query", missing, "SELECT 1")
    assert f"{missing}: no such bucket" in error("run", uri(endpoint, videos), "--out", missing,
                                                 "--config", str(TEST_CONFIG))
    unreachable = uri(closed, "videos")
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
