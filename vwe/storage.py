"""Run outputs on a local path, an NFS mount or an object store (s3://, gs://, abfs://), through one small API.

A path without a scheme (or a file:// URI) is a local file, read and written with the usual calls; anything else is
opened with `pyarrow.fs.FileSystem.from_uri`, so credentials and endpoints come from the usual environment
(AWS_* variables or an instance profile for S3, Application Default Credentials for GCS). Local paths keep their
`Path` type through `join`, because pathlib would turn "s3://bucket" into "s3:/bucket"; URIs stay strings.

Writes are atomic on both: a local file is written to a temporary name in its folder and renamed; an object is
uploaded in one request (or one multipart upload) and appears whole or not at all. Object stores have no real
folders: `makedirs` is a no-op there and `listdir` lists the names under a prefix.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.fs as pafs

PathLike = str | Path


def is_uri(path: PathLike) -> bool:
    """True for an object-store URI (s3://bucket/key, gs://...); False for local paths and file:// URIs."""
    scheme = urlsplit(str(path)).scheme
    return "://" in str(path) and scheme not in ("", "file")


def local_path(path: PathLike) -> Path:
    """The local path of a plain path or a file:// URI."""
    text = str(path)
    return Path(urlsplit(text).path) if text.startswith("file://") else Path(text)


def join(base: PathLike, *parts: str) -> PathLike:
    """`base / part / ...`: a `Path` for a local base, a string for a URI."""
    if not is_uri(base):
        return local_path(base).joinpath(*parts)
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def parent(path: PathLike) -> PathLike:
    """The folder holding `path`."""
    if not is_uri(path):
        return local_path(path).parent
    return str(path).rstrip("/").rsplit("/", 1)[0]


def name(path: PathLike) -> str:
    """The last component of `path`."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=None)
def _filesystem(scheme: str, netloc: str) -> tuple[pafs.FileSystem, str]:
    """The client of one bucket (container) and the bucket's path inside it; one per process, since from_uri may
    ask the store for the bucket's region. (pyarrow is imported here: local paths never need it.)"""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")
    return fs, root.rstrip("/")


def _resolve(uri: PathLike) -> tuple[pafs.FileSystem, str]:
    parts = urlsplit(str(uri))
    fs, root = _filesystem(parts.scheme, parts.netloc)
    return fs, f"{root}{parts.path}".rstrip("/")


def _kind(uri: PathLike) -> str:
    """"File", "Directory" or "NotFound" (pyarrow's FileType names)."""
    fs, inner = _resolve(uri)
    return fs.get_file_info(inner).type.name


def exists(path: PathLike) -> bool:
    if not is_uri(path):
        return local_path(path).exists()
    return _kind(path) != "NotFound"


def is_file(path: PathLike) -> bool:
    if not is_uri(path):
        return local_path(path).is_file()
    return _kind(path) == "File"


def is_dir(path: PathLike) -> bool:
    """A local folder, or a prefix with at least one object under it."""
    if not is_uri(path):
        return local_path(path).is_dir()
    return _kind(path) == "Directory"


def listdir(path: PathLike) -> list[str]:
    """Sorted names directly inside `path` (files and folders); [] when it does not exist."""
    if not is_uri(path):
        folder = local_path(path)
        return sorted(os.listdir(folder)) if folder.is_dir() else []
    import pyarrow.fs as pafs

    fs, inner = _resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def missing(folder: PathLike, names: list[str]) -> list[str]:
    """The `names` that are not directly inside `folder`, in their order: one listing, not a request per name
    (which takes minutes for 10k files in an object store)."""
    present = set(listdir(folder))
    return [n for n in names if n not in present]


def walk_files(path: PathLike) -> list[str]:
    """Sorted "/"-separated paths, relative to `path`, of the files under it at any depth; [] when it does not
    exist."""
    if not is_uri(path):
        folder = local_path(path)
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    import pyarrow.fs as pafs

    fs, inner = _resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=True))
    return sorted(info.path[len(inner) + 1:] for info in infos if info.type.name == "File")


def makedirs(path: PathLike) -> None:
    if not is_uri(path):
        local_path(path).mkdir(parents=True, exist_ok=True)


def delete(path: PathLike) -> None:
    """Removes a file or a whole folder (prefix); nothing happens when it does not exist."""
    if not is_uri(path):
        target = local_path(path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        return
    fs, inner = _resolve(path)
    kind = fs.get_file_info(inner).type.name
    if kind == "File":
        fs.delete_file(inner)
    elif kind == "Directory":
        fs.delete_dir(inner)


class _RangeReader(io.RawIOBase):
    """pyarrow's random-access reader of an object with Python's file rules (a seek before the start is an
    OSError, as zipfile and numpy expect; pyarrow raises ArrowInvalid)."""

    def __init__(self, native: pafs.NativeFile):
        self._native = native
        self._size = native.size()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._native.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + {io.SEEK_SET: 0, io.SEEK_CUR: self._native.tell(), io.SEEK_END: self._size}[whence]
        if target < 0:
            raise OSError(errno.EINVAL, "seek before the start of the object")
        return self._native.seek(target)

    def readinto(self, buffer) -> int:
        data = self._native.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._native.close()
        super().close()


def open_input(path: PathLike) -> IO[bytes]:
    """A seekable binary reader. On an object store each read fetches a byte range (1 MiB buffered), so header and
    index checks stay cheap. A missing file raises FileNotFoundError (an OSError) on both kinds of storage.
    """
    if not is_uri(path):
        return open(local_path(path), "rb")
    fs, inner = _resolve(path)
    if fs.get_file_info(inner).type.name != "File":
        raise FileNotFoundError(f"{path}: no such object")
    return io.BufferedReader(_RangeReader(fs.open_input_file(inner)), buffer_size=1024 * 1024)


def read_bytes(path: PathLike) -> bytes:
    with open_input(path) as f:
        return f.read()


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def upload(source: PathLike, path: PathLike) -> None:
    """Copies the local file `source` to `path` (atomically: see the module docstring)."""
    if not is_uri(path):
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)
        return
    fs, inner = _resolve(path)
    with open(source, "rb") as src, fs.open_output_stream(inner) as dst:
        shutil.copyfileobj(src, dst, length=8 * 1024 * 1024)


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[Path]:
    """A local file with the content of `path`, for libraries that need a real file name; a local `path` is
    yielded as it is, an object is downloaded to a temporary file that is removed afterwards."""
    if not is_uri(path):
        yield local_path(path)
        return
    with tempfile.TemporaryDirectory(prefix="vwe-") as folder:
        copy = Path(folder) / name(path)
        with open_input(path) as src, open(copy, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 * 1024 * 1024)
        yield copy


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a local temporary path to write `path` to; on success it becomes `path`, on error it is removed.

    Local: the temporary file sits beside `path` and is renamed over it. URI: it sits in a temporary folder and is
    uploaded when the block ends. The temporary name keeps the suffix, so writers that pick a format from it (PIL,
    numpy) still work.
    """
    if is_uri(path):
        with tempfile.TemporaryDirectory(prefix="vwe-") as folder:
            tmp = Path(folder) / name(path)
            yield tmp
            upload(tmp, path)
        return
    path = local_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
