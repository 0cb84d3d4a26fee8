"""Where fervid's files live: local paths, or URIs that pyarrow's filesystems handle (s3://, gs://).

The one module that reaches files by location; everything else passes it a path or a URI. A URI is
parsed by pyarrow's FileSystem.from_uri, so its options ride in the query
(s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http) and credentials come from the usual
environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE; for gs://, Google's
default credentials, or none for gs://anonymous@bucket). A local file is written to a temporary name,
synced and renamed; on an object store one upload is already all-or-nothing. Decoders need a local
file, so a remote video is fetched once per node into a bounded cache (local_file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import FervidError, first_line

SCHEMES = ("s3", "gs", "gcs")  # object stores whose paths start with the bucket, so a URI names one object
CACHE_DIR_ENV, CACHE_GB_ENV = "FERVID_CACHE_DIR", "FERVID_CACHE_GB"  # per node: its disk, not the run's results
DEFAULT_CACHE_GB = 20.0
# google-cloud-cpp retries a failing request for 15 minutes unless told otherwise: a batch tool should
# say what is wrong sooner (a URI's own retry_limit_seconds wins)
GCS_RETRY_LIMIT_S = 60
COPY_CHUNK = 8 << 20

# Where each store's clients look for credentials (Google's default credentials for gs://)
_GOOGLE = ("GOOGLE_APPLICATION_CREDENTIALS, or the machine's service account; "
           "gs://anonymous@BUCKET/... for a public bucket")
_CREDENTIALS = {"s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
                "gs": _GOOGLE, "gcs": _GOOGLE}
_DENIED = "access denied: check the credentials ({}) and that they may use this bucket"
_UNREACHABLE = "cannot reach the storage endpoint (check endpoint_override, scheme and the network)"
# pyarrow's errors carry the store's own: AWS error names; google-cloud-cpp's status codes and curl's errors.
# The first match wins: a Google token that cannot be fetched carries a curl error too.
_REASONS = (
    ("NO_SUCH_BUCKET", "no such bucket"),
    ("NETWORK_CONNECTION", _UNREACHABLE),
    ("ACCESS_DENIED", _DENIED), ("INVALID_ACCESS_KEY_ID", _DENIED), ("SIGNATURE_DOES_NOT_MATCH", _DENIED),
    ("Could not create a OAuth2 access token", "no usable credentials ({})"),
    ("PERMISSION_DENIED", _DENIED), ("UNAUTHENTICATED", _DENIED),
    ("CURL error", _UNREACHABLE),
)


@dataclass(frozen=True)
class Location:
    """A file or folder: the filesystem it is on and its path there (absolute locally, bucket/key remotely)."""

    fs: pafs.FileSystem
    path: str
    scheme: str = ""  # "" for a local path
    query: str = ""  # the URI's options, kept so that the URIs of what lies below open the same way
    user: str = ""  # "anonymous" for gs://anonymous@bucket (pyarrow's anonymous access), kept likewise

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    @property
    def uri(self) -> str:
        """How to name it to the user and to fervid again: the local path, or the URI with its options."""
        if not self.remote:
            return self.path
        user = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{user}{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    def child(self, *parts: str) -> Location:
        return dataclasses.replace(self, path="/".join([self.path.rstrip("/"), *parts]))


def is_uri(target: str | Path) -> bool:
    return "://" in str(target)


def locate(target: str | Path | Location) -> Location:
    """A path or URI as a Location; an unsupported scheme or credentials in the URI are one clear error."""
    if isinstance(target, Location):
        return target
    text = str(target)
    if not is_uri(text):
        return Location(pafs.LocalFileSystem(), os.path.abspath(text))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise FervidError(f"{text}: unsupported URI scheme '{scheme}://' (fervid takes local paths, s3:// and gs://)")
    anonymous = scheme != "s3" and parts.username == "anonymous" and not parts.password
    if (parts.username or parts.password) and not anonymous:
        raise FervidError(f"{text}: credentials do not belong in the URI (fervid records URIs in the results); "
                          f"use instead: {_CREDENTIALS[scheme]}")
    with _remote_errors(text):
        fs = _filesystem(scheme, parts.netloc, parts.query)
    bucket = parts.netloc.rpartition("@")[2]
    return Location(fs, (bucket + parts.path).rstrip("/"), scheme, parts.query, parts.username or "")


def file_name(target: str | Path) -> str:
    """The last part of a path or of a URI's path (without its options)."""
    return PurePosixPath(urlsplit(str(target)).path if is_uri(target) else str(target)).name


def stat(target: str | Path | Location) -> pafs.FileInfo:
    """type (File, Directory or NotFound), size and mtime; on an object store a prefix with keys is a Directory,
    and a missing bucket is an error (a mistyped bucket name should not read as an empty folder)."""
    loc = locate(target)
    with _guard(loc):
        info = loc.fs.get_file_info(loc.path)
        bucket = loc.path.split("/")[0]
        if loc.remote and info.type == pafs.FileType.NotFound and loc.fs.get_file_info(bucket).type == info.type:
            raise FervidError(f"{loc.uri}: no such bucket")
        return info


def list_files(target: str | Path | Location) -> list[tuple[Location, int]]:
    """Every file under target (or target itself if it is a file) with its size, in path order; [] if missing.

    Local folder links are followed once, so a link loop is harmless; a dangling link is listed with size 0
    (reading it then says why it fails).
    """
    root = locate(target)
    if not root.remote:
        return _list_local(root)
    with _remote_errors(root.uri):
        info = root.fs.get_file_info(root.path)
        if info.type == pafs.FileType.File:
            return [(root, info.size)]
        if info.type == pafs.FileType.NotFound:
            return []
        found = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
    return sorted(((root.child(f.path[len(root.path) + 1:]), f.size) for f in found if f.type == pafs.FileType.File),
                  key=lambda item: item[0].path)


def _list_local(root: Location) -> list[tuple[Location, int]]:
    if os.path.isfile(root.path):
        return [(root, os.path.getsize(root.path))]
    if not os.path.isdir(root.path):
        return []
    listed: list[tuple[Location, int]] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: str) -> None:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a link loop, or a folder reached twice
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as entries:
            entries = sorted(entries, key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir():
                walk(entry.path)
                continue
            try:
                size = entry.stat().st_size
            except OSError:  # a dangling link
                size = 0
            listed.append((dataclasses.replace(root, path=entry.path), size))

    walk(root.path)
    return sorted(listed, key=lambda item: item[0].path)


def open_input(target: str | Path | Location) -> pa.NativeFile:
    """A file to read by offset: a remote one fetches only the ranges read, not the whole object."""
    loc = locate(target)
    if not loc.remote:
        if not os.path.isfile(loc.path):  # reading a pipe would block; a dangling link has nothing
            raise OSError(0, "not a regular file (a dangling link, a pipe or a device)")
        return pa.PythonFile(open(loc.path, "rb"), mode="r")
    with _remote_errors(loc.uri):
        return loc.fs.open_input_file(loc.path)


def read_bytes(target: str | Path | Location) -> bytes:
    loc = locate(target)
    with _guard(loc), loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def read_table(target: str | Path | Location, **kwargs) -> pa.Table:
    """One Parquet file (kwargs as for pyarrow.parquet.read_table)."""
    loc = locate(target)
    with _guard(loc):
        return pq.read_table(loc.path, filesystem=loc.fs, **kwargs)


def read_schema(target: str | Path | Location) -> pa.Schema:
    loc = locate(target)
    with _guard(loc):
        return pq.read_schema(loc.path, filesystem=loc.fs)


def write_bytes(target: str | Path | Location, data: bytes | pa.Buffer) -> None:
    """Write a whole file so that no reader ever sees part of it: locally to a temporary name, synced, then
    renamed; on an object store as one upload: the object appears, whole, when the upload completes."""
    loc = locate(target)
    if loc.remote:
        with _remote_errors(loc.uri), loc.fs.open_output_stream(loc.path) as out:
            out.write(data)
        return
    path = Path(loc.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def delete(target: str | Path | Location, prune_folder: bool = False) -> None:
    """Remove a file; one already gone is fine. prune_folder: its folder too, locally, if that leaves it empty
    (an object store has no folders), so a folder of many per-video folders does not fill with empty ones."""
    loc = locate(target)
    if not loc.remote:
        Path(loc.path).unlink(missing_ok=True)
        if prune_folder:
            with contextlib.suppress(OSError):  # not empty, or gone
                os.rmdir(Path(loc.path).parent)
        return
    with _remote_errors(loc.uri), contextlib.suppress(FileNotFoundError):
        loc.fs.delete_file(loc.path)


def local_file(target: str, key: str, cache_dir: Path | None = None, max_bytes: int | None = None) -> str:
    """A local path to decode target from: a local path as it is; a remote file's copy in this node's cache.

    key names the copy (the video's content id), so every process on a node shares one copy per video: the
    first fetches it under a lock (to a temporary name, then renamed) while the others wait for it. Copies
    least recently used go when the cache holds more than max_bytes (default FERVID_CACHE_GB GiB, in
    FERVID_CACHE_DIR or the temp folder); a reader with a copy open keeps reading it.
    """
    loc = locate(target)
    if not loc.remote:
        return target
    folder = cache_dir or Path(os.environ.get(CACHE_DIR_ENV) or Path(tempfile.gettempdir()) / "fervid-cache")
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / (key + PurePosixPath(loc.path).suffix.lower())
    with made_once(copy, lambda part: _download(loc, part)):
        now = time.time_ns()
        os.utime(copy, ns=(now, now))  # the recency eviction goes by (finer than the filesystem's own clock)
    _evict(folder, cache_limit() if max_bytes is None else max_bytes, keep=copy)
    return str(copy)


def cache_limit() -> int:
    """The node's cache size in bytes, from FERVID_CACHE_GB."""
    text = os.environ.get(CACHE_GB_ENV) or str(DEFAULT_CACHE_GB)
    try:
        gib = float(text)
    except ValueError:
        gib = -1.0
    if gib < 0:
        raise FervidError(f"{CACHE_GB_ENV} must be a number of GiB (the node-local cache of remote videos), "
                          f"got {text!r}")
    return int(gib * 2**30)


def _download(loc: Location, to: Path) -> None:
    with _remote_errors(loc.uri), loc.fs.open_input_stream(loc.path) as source, open(to, "wb") as sink:
        shutil.copyfileobj(source, sink, COPY_CHUNK)


def _evict(folder: Path, max_bytes: int, keep: Path) -> None:
    """Remove the least recently used copies until the rest fit max_bytes; never keep, nor one in use by a fetch."""
    with _flock(folder / ".evict.lock"):
        copies = []
        for path in folder.iterdir():
            if path.name.startswith(".") or path.suffix == ".lock":
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                copies.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in copies)
        for _, size, path in sorted(copies):
            if total <= max_bytes:
                break
            if path == keep:
                continue
            try:
                with _flock(folder / f"{path.name}.lock", blocking=False):
                    path.unlink(missing_ok=True)
            except BlockingIOError:  # being fetched or used just now
                continue
            total -= size


@contextmanager
def made_once(target: Path, make: Callable[[Path], None]) -> Iterator[Path]:
    """Hold target, made first by make(part) if it is not there, under a lock on this node: one process
    makes it while the others wait, then find it. make writes a part that is renamed when whole; a part
    that a failed or killed maker left is removed or overwritten."""
    with _flock(target.with_name(f"{target.name}.lock")):
        if not target.is_file():
            part = target.with_name(f".{target.name}.part")
            try:
                make(part)
                os.replace(part, target)
            finally:
                part.unlink(missing_ok=True)
        yield target


@contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, netloc: str, query: str) -> pafs.FileSystem:
    """One filesystem per bucket (anonymous or not) and options (making one may ask the store for the bucket's
    region)."""
    if scheme != "s3" and "retry_limit_seconds" not in parse_qs(query):
        query = "&".join(filter(None, [query, f"retry_limit_seconds={GCS_RETRY_LIMIT_S}"]))
    return pafs.FileSystem.from_uri(f"{scheme}://{netloc}" + (f"?{query}" if query else ""))[0]


def _guard(loc: Location) -> contextlib.AbstractContextManager:
    """Remote errors become one line naming the URI; local ones stay OSErrors, as their callers expect."""
    return _remote_errors(loc.uri) if loc.remote else contextlib.nullcontext()


@contextmanager
def _remote_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except FervidError:
        raise
    except (OSError, pa.ArrowException) as e:
        reason = next((text for marker, text in _REASONS if marker in str(e)), None)
        credentials = _CREDENTIALS[urlsplit(uri).scheme.lower()]
        raise FervidError(f"{uri}: {reason.format(credentials) if reason else first_line(e)}") from None
