"""Which store a URI names and how to reach it: Hadoop-style URIs mapped to
fsspec filesystems, the S3 settings shared with Spark's S3A, bounded HTTP
calls, and ``check_root`` (is a dataset root usable, before any work).
``courier_spark/core/fs.py``, the file operations, is the one door callers use;
it re-exports this module's public names.

HDFS has two doors. ``hdfs://`` is the NameNode's RPC port: Spark's own client
speaks it, but Python needs pyarrow's libhdfs (a JVM and the Hadoop native
library on every host). ``webhdfs://`` is the same filesystem through the
NameNode's HTTP port (Hadoop's WebHdfsFileSystem on the JVM side, fsspec's
WebHDFS over ``requests`` here), so a root spelled that way needs nothing on
the hosts but this package. Both authenticate as ``HADOOP_USER_NAME`` or the
OS user, like Hadoop's simple auth.

S3-compatible stores (``s3a://``, any endpoint) are configured once, for Spark:
the ``fs.s3a.*`` settings in ``spark.extra`` (endpoint, path-style access,
keys, region). ``configure`` derives the s3fs options from those same keys and
exports them as the standard AWS environment variables, so every s3fs client
in this process and its children -- petastorm's own, Spark's Python workers,
training ranks -- reaches the same store with the same identity.

Standard library, fsspec and ``courier_spark.core.errors`` only, like fs.py.
"""
from __future__ import annotations

import getpass
import os
import re
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from courier_spark.core.errors import FilesystemError, MissingRootError

# Hadoop scheme -> fsspec protocol. Hadoop's connectors and fsspec name the
# same stores differently; the URI a user gives Spark must work here unchanged.
_PROTOCOLS: dict[str, str] = {
    "": "file", "file": "file", "local": "file",
    "s3": "s3", "s3a": "s3", "s3n": "s3",
    "abfs": "abfs", "abfss": "abfs", "wasb": "abfs", "wasbs": "abfs", "az": "abfs",
    "gs": "gcs", "gcs": "gcs",
    "hdfs": "hdfs",
    "webhdfs": "webhdfs",
    "memory": "memory",
}
# The pip package that provides each fsspec protocol.
_PACKAGES: dict[str, str] = {"s3": "s3fs", "abfs": "adlfs", "gcs": "gcsfs", "hdfs": "pyarrow",
                             "webhdfs": "requests"}
# Filesystems that append in place (elsewhere append_line rewrites the file).
APPENDABLE = frozenset({"hdfs", "webhdfs"})
# (connect, read) seconds for every HTTP call to a WebHDFS NameNode/DataNode:
# an unreachable host must fail in seconds, not hang a job (requests has no
# default timeout). storage.connect_timeout_s sets the connect part (configure()). The read
# part bounds silence between bytes: long for data transfers, short while
# check_root asks a server that answered nothing yet whether the root is usable.
_HTTP_READ_TIMEOUT_S = {"read": 300.0}
_HTTP_CONNECT_TIMEOUT_S = {"connect": 5.0}
_CHECK_READ_TIMEOUT_S = 15.0
# No rename, but a PUT is all-or-nothing: write the target directly.
OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})
# fs.s3a.* settings (as Spark's S3A gets them) behind the s3fs options; set by configure().
_S3A: dict[str, str] = {}
# What configure() exports for s3fs/botocore clients it does not build itself.
_S3A_ENV = {"access.key": "AWS_ACCESS_KEY_ID", "secret.key": "AWS_SECRET_ACCESS_KEY",
            "session.token": "AWS_SESSION_TOKEN", "endpoint.region": "AWS_DEFAULT_REGION"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_LOCAL = LocalFileSystem()


# ------------------------------------------------------------------ addressing

def join(root: str, *parts: str) -> str:
    """``root/part/...`` with slashes stripped between parts and the scheme kept
    (``join("s3a://b/", "/models")`` -> ``s3a://b/models``); the same rule as
    the table paths, so artefacts and tables share one root."""
    return "/".join([root.rstrip("/")] + [p.strip("/") for p in parts])


def scheme(uri: str) -> str:
    m = _SCHEME.match(uri)
    # One letter is a Windows drive ("C:\\x"), not a scheme.
    return m.group(1).lower() if m and len(m.group(1)) > 1 else ""


def is_local(uri: str) -> bool:
    """Whether ``uri`` names the local filesystem (plain path or ``file:``), i.e.
    libraries that want an OS path can be given ``to_local_path(uri)`` directly."""
    return _PROTOCOLS.get(scheme(uri)) == "file"


def to_local_path(uri: str) -> str:
    """The absolute OS path of a local URI (``file:/x``, ``file:///x``,
    ``file://localhost/x`` or a plain, possibly relative, path)."""
    s = scheme(uri)
    if _PROTOCOLS.get(s) != "file":
        raise FilesystemError(f"{uri} is not a local path (scheme {s!r})")
    rest = uri[len(s) + 1:] if s else uri
    if s and rest.startswith("//"):
        host, sep, tail = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise FilesystemError(f"{uri} names host {host!r}; a local file URI has none")
        rest = "/" + tail
    return os.path.abspath(os.path.expanduser(rest))


def to_fsspec(uri: str) -> tuple[str, str]:
    """(fsspec protocol, URL fsspec understands) for a Hadoop-style URI, without
    touching the network: ``s3a://b/k`` -> ``("s3", "s3://b/k")``; local URIs
    give ``("file", absolute path)``. Other protocols fsspec knows pass through."""
    s = scheme(uri)
    proto = _PROTOCOLS.get(s)
    if proto == "file":
        return "file", to_local_path(uri)
    if proto is None:
        if s in fsspec.available_protocols() or s in fsspec.registry:
            return s, uri
        raise FilesystemError(
            f"{uri}: unsupported scheme {s!r} (use a local path, file:, s3a://, abfss://, gs://, hdfs://, "
            f"webhdfs:// or memory://)")
    return proto, proto + uri[len(s):]


def resolve(uri: str) -> tuple[fsspec.AbstractFileSystem, str, str]:
    proto, url = to_fsspec(uri)
    if proto == "file":
        return _LOCAL, url, proto
    try:
        fs, path = fsspec.core.url_to_fs(url, **_options(proto, url))
    except ImportError as e:
        pkg = _PACKAGES.get(proto, f"the fsspec implementation of {proto!r}")
        raise FilesystemError(
            f"{uri}: the {proto!r} filesystem needs the {pkg} package (pip install {pkg}); "
            f"{one_line(e)}") from None
    except Exception as e:
        hint = (" (pyarrow needs libhdfs and a JVM: set JAVA_HOME, HADOOP_HOME or ARROW_LIBHDFS_DIR, "
                "and CLASSPATH=$(hadoop classpath --glob))") if proto == "hdfs" else ""
        raise FilesystemError(f"{uri}: cannot open the {proto!r} filesystem{hint}: "
                              f"{type(e).__name__}: {one_line(e)}") from None
    if proto == "webhdfs":
        _bound_http_calls(fs)
    return fs, path, proto


def _options(proto: str, url: str) -> dict[str, Any]:
    """Storage options the URL cannot carry."""
    if proto == "webhdfs" and "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        # Hadoop's simple auth: the same user Spark's WebHdfsFileSystem sends.
        return {"user": os.environ.get("HADOOP_USER_NAME") or getpass.getuser()}
    if proto == "s3":
        return s3_options(_S3A)
    return {}


def _s3a_endpoint_url(settings: dict[str, str]) -> str | None:
    """``fs.s3a.endpoint`` as a URL: S3A takes ``host:port`` too, its scheme then
    from ``fs.s3a.connection.ssl.enabled`` (default true)."""
    endpoint = settings.get("endpoint", "").strip()
    if not endpoint or "://" in endpoint:
        return endpoint or None
    ssl = settings.get("connection.ssl.enabled", "true").strip().lower() != "false"
    return f"{'https' if ssl else 'http'}://{endpoint}"


def s3_options(settings: dict[str, str]) -> dict[str, Any]:
    """s3fs options for the ``fs.s3a.*`` settings ``settings`` (keys without the
    ``fs.s3a.`` prefix): the same endpoint, addressing style, keys and region
    Spark's S3A uses. Settings S3A has and s3fs needs not are ignored."""
    opts: dict[str, Any] = {}
    for s3a_key, opt in (("access.key", "key"), ("secret.key", "secret"), ("session.token", "token")):
        if settings.get(s3a_key):
            opts[opt] = settings[s3a_key]
    client: dict[str, Any] = {}
    url = _s3a_endpoint_url(settings)
    if url:
        client["endpoint_url"] = url
    region = settings.get("endpoint.region") or settings.get("region")
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    # Bounded like WebHDFS: a silent endpoint fails a job in seconds.
    config: dict[str, Any] = {"connect_timeout": _HTTP_CONNECT_TIMEOUT_S["connect"]}
    if settings.get("path.style.access", "").strip().lower() == "true":
        config["s3"] = {"addressing_style": "path"}
    opts["config_kwargs"] = config
    return opts


def s3a_settings(spark_extra: dict | None) -> dict[str, str]:
    """The ``fs.s3a.*`` settings of ``spark.extra`` (spelled ``spark.hadoop.fs.s3a.x``,
    flat or nested as YAML and ``--set`` give them), keyed without ``fs.s3a.``.
    Per-bucket settings (``fs.s3a.bucket.<name>.*``) are left to Spark."""
    flat: dict[str, str] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                flat[key] = str(v).lower() if isinstance(v, bool) else str(v)

    walk(spark_extra or {}, "")
    out: dict[str, str] = {}
    for key, value in flat.items():
        for prefix in ("spark.hadoop.fs.s3a.", "fs.s3a."):
            if key.startswith(prefix) and not key.startswith(prefix + "bucket."):
                out[key[len(prefix):]] = value
    return out


def _bound_http_calls(fs: fsspec.AbstractFileSystem) -> None:
    """Give every request of a WebHDFS filesystem a timeout (once per cached
    instance): requests waits forever by default."""
    session = getattr(fs, "session", None)
    if session is None or getattr(session, "_courier_timeout", False):
        return
    from requests.adapters import HTTPAdapter

    connect = _HTTP_CONNECT_TIMEOUT_S["connect"]

    class _Bounded(HTTPAdapter):
        def send(self, request, **kw):  # type: ignore[override]
            if kw.get("timeout") is None:
                kw["timeout"] = (connect, _HTTP_READ_TIMEOUT_S["read"])
            return super().send(request, **kw)

    for prefix in ("http://", "https://"):
        session.mount(prefix, _Bounded())
    session._courier_timeout = True


def configure(connect_timeout_s: float, spark_extra: dict | None = None) -> None:
    """Process-wide storage settings (the CLI applies the config's ``storage``
    section and ``spark.extra`` before it first touches the root). Filesystems
    made after this use them. ``spark.extra``'s ``fs.s3a.*`` settings configure
    s3fs here and, through the AWS environment variables (endpoint, keys,
    region; set before Spark starts, so inherited), every s3fs/botocore client
    of the child processes."""
    _HTTP_CONNECT_TIMEOUT_S["connect"] = float(connect_timeout_s)
    settings = s3a_settings(spark_extra)
    if not settings:
        return
    _S3A.clear()
    _S3A.update(settings)
    for s3a_key, var in _S3A_ENV.items():
        if settings.get(s3a_key):
            os.environ[var] = settings[s3a_key]
    url = _s3a_endpoint_url(settings)
    if url:
        os.environ["AWS_ENDPOINT_URL_S3"] = url   # botocore's per-service endpoint variable


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, its path for ``uri``): the escape hatch for code that
    needs fsspec directly. A store whose client package is missing is a
    ``FilesystemError`` naming the URI and the package to install."""
    fs, path, _ = resolve(uri)
    return fs, path


def one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fresh(fs: fsspec.AbstractFileSystem, proto: str, path: str) -> None:
    # Object-store clients cache listings; another process (a training worker,
    # the driver) may have written since.
    if proto in OBJECT_STORES:
        fs.invalidate_cache(path)


# ------------------------------------------------------------------ roots

def check_root(root: str, write: bool = True) -> None:
    """Fail early, in one line, when ``root`` cannot hold a dataset: it is a
    file, a parent of it is a file, its filesystem cannot be reached or listed
    or (with ``write``) this user may not write there. A missing root is
    created (object stores: the bucket is listed); without ``write`` (a reader,
    ``courier sql``) it is an error and nothing is created. On a remote root the write
    check puts and removes one small probe object, so a permission problem is
    found before any Spark job starts, not half way through a stage."""
    fs, path, proto = resolve(root)
    read_timeout = _HTTP_READ_TIMEOUT_S["read"]
    _HTTP_READ_TIMEOUT_S["read"] = _CHECK_READ_TIMEOUT_S
    try:
        fresh(fs, proto, path)
        _raise_if_unreachable(fs, proto)
        if proto == "s3":
            # The bucket's own listing raises the real error (no such bucket,
            # a refused key); fsspec's exists() would call both "missing".
            fs.ls(path.split("/", 1)[0], detail=False)
        if fs.exists(path):
            if not fs.isdir(path):
                raise FilesystemError(f"dataset root {root} is a file, not a directory")
            fs.ls(path, detail=False)
            if proto == "file" and write and not os.access(path, os.W_OK | os.X_OK):
                raise FilesystemError(f"dataset root {root} is not writable")
        else:
            p = parent_path(path)
            while p and p != "/":
                if fs.exists(p):
                    if not fs.isdir(p):
                        raise FilesystemError(f"dataset root {root} is under {p}, which is a file")
                    if not write and proto not in OBJECT_STORES:
                        # A parent this user may not list hides whether the root
                        # exists: say that (permission denied), not "missing".
                        fs.ls(p, detail=False)
                    break
                p = parent_path(p)
            if proto in OBJECT_STORES:
                fs.ls(path.split("/", 1)[0], detail=False)   # bucket/container reachable
            elif write:
                fs.makedirs(path, exist_ok=True)
            if not write:
                raise MissingRootError(f"dataset root {root} does not exist")
        if write and proto != "file":
            probe = f"{path.rstrip('/')}/.courier-write-probe-{uuid.uuid4().hex}"
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
    except FilesystemError:
        raise
    except Exception as e:
        raise FilesystemError(f"dataset root {root} {_root_problem(e, proto, root)}") from None
    finally:
        _HTTP_READ_TIMEOUT_S["read"] = read_timeout


def _raise_if_unreachable(fs: fsspec.AbstractFileSystem, proto: str) -> None:
    """One call to the filesystem's root that raises its real error (refused,
    timed out): fsspec's ``exists`` turns every failure into "missing"."""
    if proto == "webhdfs":
        fs.info("/")


def _root_problem(e: Exception, proto: str, root: str) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    who = ""
    if proto == "webhdfs":
        who = f" for user {_options(proto, to_fsspec(root)[1]).get('user', '(from the URI)')!r}"
    if proto == "s3" and isinstance(e, PermissionError):
        return (f"is not usable: the S3 store refused the credentials or access "
                f"(spark.extra fs.s3a.access.key / secret.key): {one_line(e)}")
    if proto == "s3" and isinstance(e, FileNotFoundError):
        return f"is not usable: no such bucket: {one_line(e)}"
    if isinstance(e, PermissionError) or status in (401, 403):
        detail = one_line(e) if isinstance(e, PermissionError) else f"HTTP {status}"
        return f"is not writable: Permission denied{who}: {detail}"
    return f"is not usable: {type(e).__name__}: {one_line(e)}"


def parent_path(path: str) -> str:
    p = path.rstrip("/")
    return p.rsplit("/", 1)[0] if "/" in p else ""
