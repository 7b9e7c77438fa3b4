"""Local paths and object-store URIs (s3://bucket/prefix, gs://…) behind a few functions, on pyarrow's filesystems.

Credentials and the endpoint come from the standard environment only (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, the instance role; AWS_ENDPOINT_URL for an S3-compatible
store): nothing is kept in configs or logs. Local paths keep plain file access.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import FgbgError

S3_ATTEMPTS = 8  # per request (pyarrow's default: 3, with a retry quota); Ray Train's own checkpoint uploads keep that
READ_AHEAD = 32 * 1024  # a 160×160 JPEG is 5–10 KB (bench/s3_read.py, docs/benchmarks.md)
_FILESYSTEMS: dict[tuple[int, str], pafs.FileSystem] = {}


def is_uri(path) -> bool:
    return "://" in str(path)


def absolute(path) -> str:
    """A URI as given (without a trailing /); a local path made absolute."""
    return str(path).rstrip("/") if is_uri(path) else str(Path(path).resolve())


def join(base, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def basename(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def filesystem(path) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a path or URI and the path inside it (one client per bucket and process)."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).resolve())
    scheme, rest = path.split("://", 1)
    bucket = rest.split("/", 1)[0]
    key = (os.getpid(), f"{scheme}://{bucket}")  # a forked child makes its own client
    if key not in _FILESYSTEMS:
        try:
            _FILESYSTEMS[key] = _with_retries(pafs.FileSystem.from_uri(key[1])[0])
        except (pa.ArrowException, OSError, ValueError) as e:
            raise FgbgError(f"{path}: cannot open this location ({e})") from None
    return _FILESYSTEMS[key], rest.rstrip("/")


def _with_retries(fs: pafs.FileSystem) -> pafs.FileSystem:
    """An S3 filesystem that tries each request up to S3_ATTEMPTS times with exponential backoff: a store that drops
    or throttles requests (503 SlowDown, a reset connection) costs time, not the run. The AWS SDK's default strategy,
    not its "standard" one, whose retry quota gave up when a quarter of the requests failed (tests/flaky_s3.py).
    Other filesystems as they are."""
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    options = fs.__reduce__()[1][0]  # the options from_uri resolved (endpoint, credentials …), as pickling keeps them
    options["region"] = fs.region  # (the bucket's region, which from_uri looked up)
    options.pop("retry_strategy", None)  # (not kept by pyarrow 26; should a later one keep it, this one replaces it)
    return pafs.S3FileSystem(**options, retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=S3_ATTEMPTS))


def failure(path, error: Exception) -> FgbgError:
    """One clear error naming the path or URI, for what a filesystem raised."""
    text = str(error)
    if "ACCESS_DENIED" in text or "AccessDenied" in text or isinstance(error, PermissionError):
        return FgbgError(f"{path}: access denied (check the AWS credentials or instance role, and the bucket policy)")
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return FgbgError(f"{path}: no such bucket")
    if isinstance(error, FileNotFoundError):
        return FgbgError(f"{path}: no such file or folder")
    return FgbgError(f"{path}: {text.splitlines()[0] if text else type(error).__name__}")


def info(path) -> pafs.FileInfo:
    fs, inner = filesystem(path)
    try:
        return fs.get_file_info(inner)
    except OSError as e:
        raise failure(path, e) from None


def check_bucket(path) -> None:
    """For a URI, an error naming it when its bucket is missing or may not be read; nothing for a local path."""
    if is_uri(path):
        scheme, rest = str(path).split("://", 1)
        bucket = rest.split("/", 1)[0]
        if info(f"{scheme}://{bucket}").type == pafs.FileType.NotFound:
            raise FgbgError(f"{path}: no such bucket {bucket!r} (or no access to it)")


def is_dir(path) -> bool:
    """Whether path is a folder (for a URI: a prefix with objects under it); a missing bucket is an error."""
    if not is_uri(path):
        return Path(path).is_dir()
    check_bucket(path)
    return info(path).type == pafs.FileType.Directory


def listdir(path, recursive: bool = False) -> list[pafs.FileInfo]:
    """What is in a folder (every file under it when recursive); FileInfo.path is relative to it."""
    fs, inner = filesystem(path)
    try:
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=recursive))
    except OSError as e:
        raise failure(path, e) from None
    prefix = inner.rstrip("/") + "/"
    return [pafs.FileInfo(f.path[len(prefix):], f.type, mtime_ns=f.mtime_ns, size=f.size) for f in found]


def open_input(path):
    """A seekable binary file (for a URI: ranged reads, nothing downloaded up front), e.g. for zipfile.

    zipfile reads a member as three small reads (header, name, data); for a URI each read is a
    request, so a read-ahead makes it one request for any image up to about READ_AHEAD bytes.
    """
    if not is_uri(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    return io.BufferedReader(_RetryingInput(fs.open_input_file(inner)), buffer_size=READ_AHEAD)


def _retried(read):
    """read(), tried up to S3_ATTEMPTS times. The AWS SDK retries a throttled request by itself, except a read shorter
    than the error's own body (zipfile's 22-byte read of a zip's end, a run's 100-byte lock file): it fails writing
    that body into the read's buffer ("Failed to flush response stream") and gives up. A missing object is not retried."""
    for attempt in range(S3_ATTEMPTS):
        try:
            return read()
        except FileNotFoundError:
            raise
        except OSError:
            if attempt == S3_ATTEMPTS - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt))


class _RetryingInput(io.RawIOBase):
    """Ranged reads of an object, each one `_retried`."""

    def __init__(self, f):
        super().__init__()
        self.f, self.pos = f, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.f.size()}[whence] + offset
        return self.pos

    def readinto(self, buffer) -> int:
        data = _retried(lambda: self.f.read_at(len(buffer), self.pos))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def read_bytes(path) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, inner = filesystem(path)

    def read() -> bytes:
        with fs.open_input_stream(inner) as f:
            return f.read()

    return _retried(read)


def write_bytes(path, data: bytes) -> None:
    """Write a whole file: local files by rename (atomic), objects by one upload (atomic too)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, inner = filesystem(path)
    try:
        with fs.open_output_stream(inner) as f:
            f.write(data)
    except OSError as e:
        raise failure(path, e) from None


def delete(path, folder: bool = False) -> None:
    """Remove one file or object, or with folder=True a folder and what it holds; one that is already gone is fine."""
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True) if folder else Path(path).unlink(missing_ok=True)
        return
    fs, inner = filesystem(path)
    try:
        fs.delete_dir(inner) if folder else fs.delete_file(inner)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise failure(path, e) from None


def upload_dir(local: str, uri: str) -> None:
    """Copy a local folder's files to a URI or another local folder (overwriting what is there)."""
    if not is_uri(uri):
        shutil.copytree(local, uri, dirs_exist_ok=True)
        return
    fs, inner = filesystem(uri)
    try:
        pafs.copy_files(local, inner, destination_filesystem=fs)
    except OSError as e:
        raise failure(uri, e) from None
