"""courier_spark.core.fs: one filesystem layer for every non-table artefact.

Each behaviour runs on fsspec's in-memory filesystem (a real non-``file``
implementation, URIs with a scheme) and on local tmp paths, both plain and as
``file:`` URIs. No network: object stores are checked through the scheme
mapping and the missing-package error only.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
import uuid

import fsspec
import pytest

_REGISTRY = sys.modules["fsspec.registry"]._registry   # fsspec.registry is shadowed by a mapping

from courier_spark.core import fs, stores
from courier_spark.core.errors import CourierError
from courier_spark.core.errors import FilesystemError


@pytest.fixture
def mem_root():
    root = f"memory://courier-test-{uuid.uuid4().hex[:12]}"
    yield root
    fs.rm(root, recursive=True)


@pytest.fixture(params=["memory", "local", "file_uri"])
def root(request, tmp_path):
    """A fresh, not yet existing directory on each kind of filesystem."""
    if request.param == "memory":
        r = f"memory://courier-test-{uuid.uuid4().hex[:12]}"
        yield r
        fs.rm(r, recursive=True)
    elif request.param == "local":
        yield str(tmp_path / "root")
    else:
        yield "file:" + str(tmp_path / "root")


def _temps(directory: str) -> list[str]:
    return [n for n in fs.ls(directory) if ".tmp-" in n] if fs.isdir(directory) else []


# ------------------------------------------------------------------ addressing

def test_join_matches_table_paths_rule():
    from courier_spark.core.paths import _join
    cases = [("s3a://b/", "/models/", "m"), ("abfss://c@a.dfs.core.windows.net/x", "models"),
             ("/tmp/ds/", "reports"), ("memory://r", "a/", "/b")]
    for c in cases:
        assert fs.join(*c) == _join(*c)
    assert fs.join("s3a://b/", "/models/", "m") == "s3a://b/models/m"
    assert fs.join("file:/x", "y") == "file:/x/y"


@pytest.mark.parametrize("uri, proto, url", [
    ("s3a://b/k", "s3", "s3://b/k"),
    ("s3n://b/k/x.pt", "s3", "s3://b/k/x.pt"),
    ("s3://b/k", "s3", "s3://b/k"),
    ("abfss://c@acct.dfs.core.windows.net/x", "abfs", "abfs://c@acct.dfs.core.windows.net/x"),
    ("abfs://c@acct.dfs.core.windows.net/x", "abfs", "abfs://c@acct.dfs.core.windows.net/x"),
    ("wasbs://c@acct.blob.core.windows.net/x", "abfs", "abfs://c@acct.blob.core.windows.net/x"),
    ("gs://b/x", "gcs", "gcs://b/x"),
    ("hdfs://nn:8020/x", "hdfs", "hdfs://nn:8020/x"),
    ("memory://m/x", "memory", "memory://m/x"),
    ("file:/x/y", "file", "/x/y"),
    ("file:///x/y", "file", "/x/y"),
    ("file://localhost/x/y", "file", "/x/y"),
    ("/x/y", "file", "/x/y"),
])
def test_scheme_mapping(uri, proto, url):
    assert fs.to_fsspec(uri) == (proto, url)


def test_scheme_mapping_local_and_unknown():
    assert fs.to_fsspec("rel/dir") == ("file", os.path.abspath("rel/dir"))
    assert fs.is_local("/x") and fs.is_local("file:/x") and fs.is_local("rel")
    assert not fs.is_local("s3a://b/k") and not fs.is_local("memory://x")
    assert fs.to_local_path("file:///x/y") == "/x/y"
    with pytest.raises(FilesystemError, match="not a local path"):
        fs.to_local_path("s3a://b/k")
    with pytest.raises(FilesystemError, match=r"nosuchfs://x/y: unsupported scheme 'nosuchfs'"):
        fs.filesystem("nosuchfs://x/y")


@pytest.mark.parametrize("uri, module, proto", [
    ("s3a://bucket/models", "s3fs", "s3"),
    ("abfss://c@acct.dfs.core.windows.net/models", "adlfs", "abfs"),
    ("gs://bucket/models", "gcsfs", "gcs"),
])
def test_missing_store_package_names_it(monkeypatch, uri, module, proto):
    # Make the package unimportable whether or not it is installed here.
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(_REGISTRY, proto, raising=False)
    with pytest.raises(FilesystemError) as ei:
        fs.filesystem(uri)
    msg = str(ei.value)
    assert uri in msg and f"pip install {module}" in msg and "\n" not in msg


def test_s3a_maps_to_the_s3_implementation():
    pytest.importorskip("s3fs")
    f, path = fs.filesystem("s3a://bucket/models/m")   # constructing it makes no request
    assert "s3" in (f.protocol if isinstance(f.protocol, tuple) else (f.protocol,))
    assert path == "bucket/models/m"


def test_hdfs_without_libhdfs_is_a_clear_error():
    if os.environ.get("HADOOP_HOME") or os.environ.get("ARROW_LIBHDFS_DIR"):
        pytest.skip("a Hadoop client is installed here: connecting could block on retries")
    with pytest.raises(FilesystemError, match=r"hdfs://nn:8020/x: cannot open the 'hdfs' filesystem.*libhdfs"):
        fs.filesystem("hdfs://nn:8020/x")


def test_memory_and_local_filesystems(mem_root, tmp_path):
    f, path = fs.filesystem(mem_root + "/a")
    assert "memory" in f.protocol and path.endswith("/a")
    f, path = fs.filesystem("file:" + str(tmp_path))
    assert "file" in f.protocol and path == str(tmp_path)


def test_import_needs_only_stdlib_and_fsspec():
    code = ("import sys, courier_spark.core.fs; "
            "bad = [m for m in ('torch', 'pandas', 'pyspark', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ round trips

def test_round_trips(root, tmp_path):
    a = fs.join(root, "d", "a.bin")
    fs.write_bytes(a, b"\x00\x01binary")
    assert fs.read_bytes(a) == b"\x00\x01binary" and fs.size(a) == 8
    assert fs.exists(a) and not fs.isdir(a) and fs.isdir(fs.join(root, "d"))

    t = fs.join(root, "d", "t.txt")
    fs.write_text(t, "grüße\n")
    assert fs.read_text(t) == "grüße\n"

    j = fs.join(root, "j.json")
    obj = {"b": 1, "a": [1, 2.5, None], "when": dt.date(2024, 1, 2)}
    fs.write_json(j, obj)
    assert fs.read_json(j) == {"a": [1, 2.5, None], "b": 1, "when": "2024-01-02"}
    text = fs.read_text(j)
    assert text.index('"a"') < text.index('"b"') < text.index('"when"') and '\n  "b": 1' in text

    with fs.open_write(fs.join(root, "s.bin")) as fh:
        for i in range(3):
            fh.write(bytes([i]) * 4)
    with fs.open_read(fs.join(root, "s.bin")) as fh:
        assert fh.read(4) == b"\x00" * 4
        fh.seek(8)
        assert fh.read() == b"\x02" * 4

    assert fs.ls(root) == ["d", "j.json", "s.bin"]
    assert fs.ls(fs.join(root, "d")) == ["a.bin", "t.txt"]
    with pytest.raises(FileNotFoundError):
        fs.ls(fs.join(root, "nope"))

    fs.write_bytes(a, b"second")             # overwrite
    assert fs.read_bytes(a) == b"second"

    fs.makedirs(fs.join(root, "e", "f"))
    fs.makedirs(fs.join(root, "e", "f"))     # exist_ok
    assert fs.isdir(fs.join(root, "e", "f"))
    with pytest.raises(FileExistsError):
        fs.makedirs(a)

    src = tmp_path / "upload.bin"
    src.write_bytes(b"up")
    fs.put_file(str(src), fs.join(root, "up", "u.bin"))
    assert fs.read_bytes(fs.join(root, "up", "u.bin")) == b"up"
    fs.get_file(fs.join(root, "up", "u.bin"), str(tmp_path / "down" / "u.bin"))
    assert (tmp_path / "down" / "u.bin").read_bytes() == b"up"

    with fs.local_copy(a) as p:
        assert open(p, "rb").read() == b"second"
    with fs.local_copy(fs.join(root, "d")) as p:
        assert sorted(os.listdir(p)) == ["a.bin", "t.txt"]
        assert open(os.path.join(p, "t.txt"), encoding="utf-8").read() == "grüße\n"
    if not fs.is_local(root):
        assert not os.path.exists(p)         # the downloaded copy is gone

    fs.rm(t)
    fs.rm(t)                                 # missing: no error
    assert not fs.exists(t)
    fs.rm(fs.join(root, "d"), recursive=True)
    assert not fs.exists(fs.join(root, "d")) and not fs.exists(a)
    assert not any(".tmp-" in n for n in fs.ls(root))


def test_local_copy_of_a_local_uri_is_the_file_itself(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("x")
    with fs.local_copy("file:" + str(p)) as got:
        assert got == str(p)
    assert p.exists()


# ------------------------------------------------------------------ atomicity

def test_failed_open_write_leaves_nothing(root):
    target = fs.join(root, "m", "model.pt")
    with pytest.raises(RuntimeError, match="boom"):
        with fs.open_write(target) as fh:
            fh.write(b"half a model")
            raise RuntimeError("boom")
    assert not fs.exists(target)
    assert _temps(fs.join(root, "m")) == []


def test_failed_open_write_keeps_old_content(root):
    target = fs.join(root, "summary.json")
    fs.write_json(target, {"v": 1})
    with pytest.raises(KeyError):
        with fs.open_write(target) as fh:
            fh.write(b'{"v": 2')
            raise KeyError("interrupted")
    assert fs.read_json(target) == {"v": 1}
    assert _temps(root) == []


def test_reader_sees_old_content_until_the_write_completes(root):
    target = fs.join(root, "weights.bin")
    fs.write_bytes(target, b"old" * 10)
    with fs.open_write(target) as fh:
        fh.write(b"new" * 5)
        fh.flush()
        assert fs.read_bytes(target) == b"old" * 10      # not the new half
        assert len(_temps(root)) == 1                    # the bytes are in the temp sibling
        fh.write(b"new" * 5)
        assert fs.read_bytes(target) == b"old" * 10
    assert fs.read_bytes(target) == b"new" * 10
    assert _temps(root) == []


def test_concurrent_reader_never_sees_a_partial_file(root):
    target = fs.join(root, "r.bin")
    old, new = b"a" * 4096, b"b" * 4096
    fs.write_bytes(target, old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(fs.read_bytes(target))

    th = threading.Thread(target=reader)
    th.start()
    try:
        for _ in range(5):
            for content in (new, old):
                with fs.open_write(target) as fh:
                    for i in range(0, len(content), 512):
                        fh.write(content[i:i + 512])
                        fh.flush()
                        time.sleep(0.0005)
    finally:
        stop.set()
        th.join()
    assert seen <= {old, new} and old in seen


def test_write_bytes_failing_at_the_move_keeps_old_content(root, monkeypatch):
    target = fs.join(root, "x.bin")
    fs.write_bytes(target, b"old")

    def broken_replace(*_a, **_k):
        raise OSError("disk gone")

    monkeypatch.setattr(fs, "_replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        fs.write_bytes(target, b"new")
    assert fs.read_bytes(target) == b"old"
    assert _temps(root) == []


# ------------------------------------------------------------------ glob / append

def test_glob_keeps_the_scheme(root):
    for rel in ("models/a/v0001/artifact.json", "models/a/v0002/artifact.json",
                "models/a/v0002/encoder.pt", "models/b/v0001/artifact.json"):
        fs.write_bytes(fs.join(root, rel), b"{}")
    got = fs.glob(fs.join(root, "models", "a", "v*", "artifact.json"))
    assert got == [fs.join(root, "models/a/v0001/artifact.json"), fs.join(root, "models/a/v0002/artifact.json")]
    assert fs.glob(fs.join(root, "models", "*", "v0001", "*.json")) == [
        fs.join(root, "models/a/v0001/artifact.json"), fs.join(root, "models/b/v0001/artifact.json")]
    assert fs.glob(fs.join(root, "models", "*", "*.pt")) == []
    assert fs.glob(fs.join(root, "models/a/v0002/encoder.pt")) == [fs.join(root, "models/a/v0002/encoder.pt")]
    if root.startswith(("memory://", "file:")):
        assert all(u.startswith(root) for u in got)


def test_glob_relative_local_pattern(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs.write_text("rep/a.md", "a")
    fs.write_text("rep/b.md", "b")
    assert fs.glob("rep/*.md") == ["rep/a.md", "rep/b.md"]


def test_append_line(root):
    log = fs.join(root, "train", "progress.log")
    fs.append_line(log, "epoch 1 loss 0.9")
    fs.append_line(log, "epoch 2 loss 0.7\n")           # a trailing newline is not doubled
    fs.append_line(log, "done")
    assert fs.read_text(log) == "epoch 1 loss 0.9\nepoch 2 loss 0.7\ndone\n"
    assert _temps(fs.join(root, "train")) == []


# ------------------------------------------------------------------ check_root

def test_check_root_creates_a_missing_root(root):
    fs.check_root(root)
    assert fs.isdir(root)
    fs.check_root(root)                                  # an existing directory is fine


def test_check_root_on_a_file(root):
    fs.write_text(fs.join(root, "f.txt"), "not a dir")
    with pytest.raises(FilesystemError, match=r"dataset root .*f\.txt is a file, not a directory") as ei:
        fs.check_root(fs.join(root, "f.txt"))
    assert "\n" not in str(ei.value)
    with pytest.raises(FilesystemError, match=r"dataset root .*f\.txt/sub/ds is under .*f\.txt, which is a file"):
        fs.check_root(fs.join(root, "f.txt", "sub", "ds"))


class _Unreachable(fsspec.AbstractFileSystem):
    """Every call fails as a dead endpoint would."""
    protocol = "courierdead"

    def _fail(self, *a, **k):
        raise ConnectionRefusedError(111, "Connection refused\n  (endpoint courierdead:443)")

    exists = isdir = info = ls = makedirs = mkdir = _fail


def test_check_root_unreachable_filesystem_is_one_line():
    fsspec.register_implementation("courierdead", _Unreachable, clobber=True)
    with pytest.raises(FilesystemError) as ei:
        fs.check_root("courierdead://host/ds")
    msg = str(ei.value)
    assert isinstance(ei.value, RuntimeError) and isinstance(ei.value, CourierError)  # CLI: one line
    assert msg.startswith("dataset root courierdead://host/ds is not usable: ConnectionRefusedError")
    assert "Connection refused" in msg and "\n" not in msg and "Traceback" not in msg


def test_check_root_missing_package_names_root(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(_REGISTRY, "s3", raising=False)
    with pytest.raises(FilesystemError, match=r"s3a://bucket/ds: .*pip install s3fs"):
        fs.check_root("s3a://bucket/ds")


# ------------------------------------------------------------------ model artefacts

@pytest.mark.parametrize("kind", ["memory", "local"])
def test_artifact_round_trip(kind, mem_root, tmp_path):
    torch = pytest.importorskip("torch")
    from training.artifact import list_versions, load_artifact, next_version, save_artifact
    from courier_spark.core.errors import ArtifactNotFoundError
    from training.backbones import build_backbone

    models = fs.join(mem_root, "models") if kind == "memory" else str(tmp_path / "models")
    torch.manual_seed(0)
    enc = build_backbone("small_cnn", 8)
    head = torch.nn.Linear(8, 2)
    kw = dict(backbone="small_cnn", embed_dim=8, image_size=16, config={"lr": 0.1},
              data_versions={"silver/pretrain_samples": 3}, metrics={"loss": 0.5})
    art = save_artifact(models, "courier", enc, head, **kw)
    assert (art.version, art.path, art.model_version) == ("v0001", fs.join(models, "courier", "v0001"),
                                                          "courier/v0001")
    assert fs.ls(art.path) == ["artifact.json", "encoder.pt", "model.pt"]

    got = load_artifact(models, "courier")
    assert (got.version, got.path, got.data_versions, got.metrics, got.config) == (
        "v0001", art.path, {"silver/pretrain_samples": 3}, {"loss": 0.5}, {"lr": 0.1})
    loaded = got.load_encoder()
    for k, v in enc.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), enc.eval()(x))
    full = torch.load(fs.open_read(fs.join(art.path, "model.pt")), weights_only=True)
    assert torch.equal(full["weight"], head.state_dict()["weight"])

    # A save that dies before artifact.json is not a version; its number is reused.
    fs.write_bytes(fs.join(models, "courier", "v0002", "encoder.pt"), b"half")
    assert list_versions(models, "courier") == ["v0001"]
    assert next_version(models, "courier") == "v0002"
    with pytest.raises(ArtifactNotFoundError, match=r"model courier/v0002 does not exist .*available: v0001"):
        load_artifact(models, "courier", "v0002")
    torch.manual_seed(1)
    art2 = save_artifact(models, "courier", build_backbone("small_cnn", 8), None, **kw)
    assert art2.version == "v0002" and fs.ls(art2.path) == ["artifact.json", "encoder.pt"]
    assert list_versions(models, "courier") == ["v0001", "v0002"]
    assert load_artifact(models, "courier").version == "v0002"
    assert load_artifact(models, "courier", "v0001").load_encoder().embed_dim == 8
    with pytest.raises(ArtifactNotFoundError, match=r"no trained model for method 'simclr'"):
        load_artifact(models, "simclr")


def test_artifact_save_failure_leaves_no_version(mem_root):
    torch = pytest.importorskip("torch")
    from training.artifact import list_versions, save_artifact
    from training.backbones import build_backbone

    class Exploding(torch.nn.Module):
        def state_dict(self, *a, **k):
            raise RuntimeError("out of memory")

    models = fs.join(mem_root, "models")
    with pytest.raises(RuntimeError, match="out of memory"):
        save_artifact(models, "courier", build_backbone("small_cnn", 8), Exploding(), backbone="small_cnn",
                      embed_dim=8, image_size=16, config={}, data_versions={}, metrics={})
    assert list_versions(models, "courier") == []
    assert not fs.exists(fs.join(models, "courier", "v0001", "artifact.json"))


# ------------------------------------------------------------------ webhdfs addressing

def test_webhdfs_uri_keeps_host_port_and_path():
    assert fs.to_fsspec("webhdfs://nn.example:9870/data/ds") == ("webhdfs", "webhdfs://nn.example:9870/data/ds")
    assert not fs.is_local("webhdfs://nn:9870/x")


def test_webhdfs_user_is_hadoop_user_name_or_os_user(monkeypatch):
    import getpass
    monkeypatch.delenv("HADOOP_USER_NAME", raising=False)
    assert fs.filesystem("webhdfs://nn:9870/x")[0].user == getpass.getuser()   # no network: no call made
    monkeypatch.setenv("HADOOP_USER_NAME", "etl")
    assert fs.filesystem("webhdfs://nn:9870/x")[0].user == "etl"
    assert fs.filesystem("webhdfs://alice@nn:9870/x")[0].user == "alice"     # the URI names its user


def test_storage_connect_timeout_reaches_every_http_call(monkeypatch):
    """storage.connect_timeout_s (fs.configure, applied by the CLI) is the connect
    part of the timeout every WebHDFS HTTP request gets: a real request to a
    real loopback HTTP server, its timeout recorded on the way (not replaced)."""
    import http.server
    import threading

    import requests
    from requests.adapters import HTTPAdapter

    from courier_spark.core.config import load_config

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen, real_send = [], HTTPAdapter.send

    def recording_send(self, request, **kw):
        seen.append(kw["timeout"])
        return real_send(self, request, **kw)

    monkeypatch.setattr(HTTPAdapter, "send", recording_send)

    class _WebHdfsLike:   # only its requests session matters here
        session = requests.Session()

    cfg = load_config(None, ["storage.connect_timeout_s=0.75"])
    try:
        fs.configure(connect_timeout_s=cfg.storage.connect_timeout_s)
        stores._bound_http_calls(_WebHdfsLike)
        assert _WebHdfsLike.session.get(f"http://127.0.0.1:{server.server_port}/nope").status_code == 404
    finally:
        fs.configure(connect_timeout_s=5.0)
        server.shutdown()
    assert seen == [(0.75, 300.0)]
