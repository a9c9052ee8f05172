"""One filesystem layer for every non-table artefact.

Models, checkpoints, caches, reports, run summaries and logs are written and
read only through this module, so a dataset root can be a plain local path or a
Hadoop-style URI (``s3a://bucket/x``, ``abfss://c@acct.dfs.core.windows.net/x``,
``gs://b/x``, ``hdfs://nn:8020/x``, ``webhdfs://nn:9870/x``, ``file:/x``) -- the
same string Spark and Delta get for the tables. ``memory://`` (fsspec's
in-process filesystem) is accepted too, for tests.

Which store a URI names, how it is reached (HDFS's two doors, S3 settings
shared with Spark) and whether a root is usable (``check_root``) is
``courier_spark/core/stores.py``; its public names are re-exported here, so
callers need only this module.

Writes are atomic: a reader sees the old file or the new one, never half of
one. On filesystems that can rename (local, hdfs, memory) the bytes go to a
temporary sibling ``.<name>.tmp-<uuid>`` that is then moved over the target; on
object stores (s3, gcs, abfs) an object appears only when its single PUT (or
multipart upload) completes, so they are written directly.

Only the standard library, fsspec and the (standard-library-only)
``courier_spark.core.errors`` are imported here -- no torch, pandas or pyspark:
every part of the project can use it, drivers and workers alike.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from io import BytesIO
from typing import IO, Any, Iterator

import fsspec

from courier_spark.core.errors import FilesystemError
from courier_spark.core.stores import (APPENDABLE, OBJECT_STORES, check_root, configure, filesystem, fresh,
                                       is_local, join, parent_path, resolve, s3_options, s3a_settings,
                                       scheme, to_fsspec, to_local_path)

__all__ = [
    "FilesystemError", "join", "to_fsspec", "filesystem", "is_local", "to_local_path",
    "configure", "s3_options", "s3a_settings", "check_root",
    "exists", "isdir", "makedirs", "ls", "glob", "rm", "size",
    "read_bytes", "read_text", "read_json", "write_bytes", "write_text", "write_json",
    "open_read", "open_write", "put_file", "get_file", "local_copy", "append_line",
]

_GLOB_CHARS = re.compile(r"[*?\[]")
_TMP_MARK = ".tmp-"


def _rebase(base_uri: str, base_path: str, path: str) -> str:
    """The URI of filesystem path ``path`` spelled like ``base_uri`` (whose
    filesystem path is ``base_path``), so results keep the caller's scheme."""
    bp = base_path.rstrip("/")
    if path == bp or path.startswith(bp + "/"):
        return base_uri.rstrip("/") + path[len(bp):]
    s = scheme(base_uri)
    return f"{s}://{path.lstrip('/')}" if s else path


# ------------------------------------------------------------------ queries

def exists(uri: str) -> bool:
    """Whether a file or directory exists at ``uri``."""
    fs, path, proto = resolve(uri)
    fresh(fs, proto, path)
    return bool(fs.exists(path))


def isdir(uri: str) -> bool:
    """Whether ``uri`` is a directory (on object stores: a non-empty prefix)."""
    fs, path, proto = resolve(uri)
    fresh(fs, proto, path)
    return bool(fs.isdir(path))


def size(uri: str) -> int:
    """Size of the file at ``uri`` in bytes."""
    fs, path, _ = resolve(uri)
    return int(fs.size(path))


def ls(uri: str) -> list[str]:
    """Sorted basenames of the entries of directory ``uri`` (like ``os.listdir``:
    a missing path is ``FileNotFoundError``, a file ``NotADirectoryError``)."""
    fs, path, proto = resolve(uri)
    fresh(fs, proto, path)
    if not fs.isdir(path):
        if fs.exists(path):
            raise NotADirectoryError(uri)
        raise FileNotFoundError(uri)
    me = path.rstrip("/")
    names = {n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False) if n.rstrip("/") != me}
    return sorted(n for n in names if n)


def glob(pattern: str) -> list[str]:
    """Sorted full URIs matching ``pattern`` (``*``, ``?``, ``[..]``), spelled with
    the pattern's own scheme and authority (``s3a://b/m/*`` gives ``s3a://b/m/...``,
    a relative local pattern gives relative paths)."""
    fs, path, proto = resolve(pattern)
    m = _GLOB_CHARS.search(pattern)
    if m is None:
        fresh(fs, proto, path)
        return [pattern] if fs.exists(path) else []
    if proto in OBJECT_STORES:
        fs.invalidate_cache()       # glob walks sub-prefixes: drop every cached listing
    found = fs.glob(path)
    cut = pattern.rfind("/", 0, m.start())
    if cut < 0 and is_local(pattern):
        return sorted(os.path.relpath(p) for p in found)
    if "://" in pattern and cut + 1 <= pattern.index("://") + 3:
        s = scheme(pattern)        # wildcard in the bucket/host itself
        return sorted(f"{s}://{p.lstrip('/')}" for p in found)
    base_uri = pattern[: cut + 1]
    base_path = resolve(base_uri)[1]
    return sorted(_rebase(base_uri, base_path, p) for p in found)


# ------------------------------------------------------------------ directories

def makedirs(uri: str, exist_ok: bool = True) -> None:
    """Create directory ``uri`` and its parents. On object stores directories
    are implicit (a prefix exists once an object is under it): nothing to do."""
    fs, path, proto = resolve(uri)
    if proto in OBJECT_STORES:
        return
    if fs.exists(path) and not fs.isdir(path):
        raise FileExistsError(f"{uri} exists and is not a directory")
    fs.makedirs(path, exist_ok=exist_ok)


def rm(uri: str, recursive: bool = False) -> None:
    """Remove the file (or, with ``recursive``, the directory tree) at ``uri``;
    a missing path is not an error, so clean-up can always be called."""
    fs, path, proto = resolve(uri)
    fresh(fs, proto, path)
    if not fs.exists(path):
        return
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


def _ensure_parent(fs: fsspec.AbstractFileSystem, proto: str, path: str) -> None:
    parent = parent_path(path)
    if proto not in OBJECT_STORES and parent:
        fs.makedirs(parent, exist_ok=True)


def _tmp_sibling(path: str) -> str:
    p = path.rstrip("/")
    parent, _, name = p.rpartition("/")
    return f"{parent}/.{name}{_TMP_MARK}{uuid.uuid4().hex}"


def _replace(fs: fsspec.AbstractFileSystem, proto: str, src: str, dst: str) -> None:
    """Move ``src`` over ``dst`` as atomically as the filesystem allows."""
    if proto == "file":
        os.replace(src, dst)
    elif proto == "memory":
        fs.cp_file(src, dst)          # one dict assignment: atomic for readers
        fs.rm_file(src)
    else:
        # HDFS rename does not overwrite: the old file goes first, so for a
        # moment there is no file (never a partial one).
        if fs.exists(dst):
            fs.rm_file(dst)
        fs.mv(src, dst)


def _quiet_rm(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm_file(path)
    except Exception:
        pass


# ------------------------------------------------------------------ reading

def read_bytes(uri: str) -> bytes:
    """The whole content of the file at ``uri``."""
    fs, path, _ = resolve(uri)
    return bytes(fs.cat_file(path))


def read_text(uri: str, encoding: str = "utf-8") -> str:
    """The file at ``uri`` decoded as text."""
    return read_bytes(uri).decode(encoding)


def read_json(uri: str) -> Any:
    """The JSON document at ``uri``."""
    return json.loads(read_bytes(uri))


def open_read(uri: str) -> IO[bytes]:
    """A binary, seekable file object for ``uri`` (use it as a context manager)."""
    fs, path, proto = resolve(uri)
    if proto == "memory":
        # The memory filesystem hands every reader the stored buffer itself
        # (one shared position); a copy keeps readers independent.
        return BytesIO(fs.cat_file(path))
    return fs.open(path, "rb")


# ------------------------------------------------------------------ writing

@contextmanager
def open_write(uri: str) -> Iterator[IO[bytes]]:
    """Yield a binary file object whose content replaces ``uri`` only when the
    block exits without error; on error nothing changes at ``uri`` and no
    temporary file is left. Parent directories are created."""
    fs, path, proto = resolve(uri)
    if proto in OBJECT_STORES:
        # Spool locally, upload once at the end: an exception must not let a
        # buffered remote file commit on close.
        with tempfile.TemporaryDirectory(prefix="courier-upload-") as d:
            local = os.path.join(d, "data")
            with open(local, "wb") as fh:
                yield fh
            fs.put_file(local, path)
        return
    _ensure_parent(fs, proto, path)
    tmp = _tmp_sibling(path)
    fh = fs.open(tmp, "wb")
    try:
        yield fh
        fh.close()
        _replace(fs, proto, tmp, path)
    except BaseException:
        try:
            fh.close()
        except Exception:
            pass
        _quiet_rm(fs, tmp)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    """Atomically replace the file at ``uri`` with ``data``."""
    fs, path, proto = resolve(uri)
    if proto in OBJECT_STORES:
        fs.pipe_file(path, bytes(data))
        return
    with open_write(uri) as fh:
        fh.write(data)


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    """Atomically replace the file at ``uri`` with ``text``."""
    write_bytes(uri, text.encode(encoding))


def write_json(uri: str, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (indent 2, sorted keys, ``str`` for
    anything JSON lacks), so runs diff cleanly and never fail on a Path/date."""
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_line(uri: str, line: str) -> None:
    """Append one text line (newline added if missing) to ``uri``, creating it.

    Local files are appended in place (one ``write`` on an O_APPEND file, so a
    tailing reader sees whole lines); HDFS appends where the cluster allows it.
    Elsewhere (object stores, memory) the file is read and rewritten
    atomically -- fine for a progress log, but only one writer per file.
    """
    if not line.endswith("\n"):
        line += "\n"
    data = line.encode("utf-8")
    fs, path, proto = resolve(uri)
    if proto == "file":
        _ensure_parent(fs, proto, path)
        with open(path, "ab") as fh:
            fh.write(data)
        return
    if proto in APPENDABLE and fs.exists(path):
        try:
            with fs.open(path, "ab") as fh:
                fh.write(data)
            return
        except OSError:
            pass              # append disabled on the cluster: rewrite below
    fresh(fs, proto, path)
    old = bytes(fs.cat_file(path)) if fs.exists(path) else b""
    write_bytes(uri, old + data)


def put_file(local_path: str, uri: str) -> None:
    """Upload the local file ``local_path`` to ``uri`` (atomically)."""
    fs, path, proto = resolve(uri)
    if proto in OBJECT_STORES:
        fs.put_file(local_path, path)
        return
    _ensure_parent(fs, proto, path)
    tmp = _tmp_sibling(path)
    try:
        fs.put_file(local_path, tmp)
        _replace(fs, proto, tmp, path)
    except BaseException:
        _quiet_rm(fs, tmp)
        raise


def get_file(uri: str, local_path: str) -> None:
    """Download the file at ``uri`` to ``local_path`` (atomically; parent
    directories created)."""
    fs, path, _ = resolve(uri)
    _download(fs, path, local_path)


def _download(fs: fsspec.AbstractFileSystem, path: str, local_path: str) -> None:
    local_path = os.path.abspath(local_path)
    os.makedirs(os.path.dirname(local_path), exist_ok=True)
    tmp = _tmp_sibling(local_path)
    try:
        fs.get_file(path, tmp)
        os.replace(tmp, local_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the file or directory at ``uri``, for libraries that
    only take OS paths. Local URIs give their own path (no copy); remote ones a
    downloaded copy, deleted when the block exits (changes to it are not
    uploaded)."""
    if is_local(uri):
        yield to_local_path(uri)
        return
    fs, path, proto = resolve(uri)
    fresh(fs, proto, path)
    d = tempfile.mkdtemp(prefix="courier-local-")
    try:
        name = path.rstrip("/").rsplit("/", 1)[-1] or "data"
        dest = os.path.join(d, name)
        if fs.isdir(path):
            os.makedirs(dest)
            base = path.rstrip("/")
            for p in fs.find(path):
                _download(fs, p, os.path.join(dest, p[len(base):].lstrip("/")))
        else:
            _download(fs, path, dest)
        yield dest
    finally:
        shutil.rmtree(d, ignore_errors=True)
