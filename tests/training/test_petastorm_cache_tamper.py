"""The petastorm cache under a (shared) root is data, never code: a pickle
planted where petastorm or pyarrow would unpickle one (a dataset's
``_common_metadata``: the Unischema and row-group index keys; a Parquet
footer's pickled extension type, ``arrow.py_extension_type``) does not run.
The payload writes a marker file through ``builtins.exec``, which
petastorm's own "restricted" unpickler lets through; the first test shows
that it does, without the guard. A pyarrow that still has
``PyExtensionType`` (14) unpickles the footer's type when its auto-load is on
(the guard switches it off);
newer pyarrow (the pinned 23.0.1) has no ``PyExtensionType`` and reads such a
column as its plain storage type, which the tests check there instead."""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from courier_spark.core.errors import CorruptArtifactError, CourierError, TamperedCacheError
from training.loader import LoaderSpec, SampleLoader, guard_petastorm_unpickling, pretrain_training_frame

from ..worlds import png

UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"           # petastorm.etl.dataset_metadata
ROWGROUPS_INDEX_KEY = b"dataset-toolkit.rowgroups_index.v1"   # petastorm.etl.rowgroup_indexing
REPO = Path(__file__).resolve().parents[2]
# petastorm 0.13.1 on pyarrow 14 and the deprecated PyExtensionType
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
# Whether this pyarrow can unpickle a footer's extension type at all (gone in newer releases).
PICKLED_EXTENSIONS = hasattr(pa, "PyExtensionType")


def extension_auto_load(on: bool) -> None:
    """Switch pickled extension types' auto-load, where this pyarrow still has it."""
    if PICKLED_EXTENSIONS:
        pa.PyExtensionType.set_auto_load(on)


def reading_pickled_extensions():
    """pyarrow that knows pickled extension types warns when it keeps one undeserialised."""
    if PICKLED_EXTENSIONS:
        return pytest.warns(RuntimeWarning, match="pickle-based deserialization")
    return contextlib.nullcontext()


def exec_payload(marker: Path) -> bytes:
    """A pickle that writes ``marker`` when unpickled (through ``builtins.exec``)."""
    class Writes:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('code ran')",)
    return pickle.dumps(Writes(), protocol=2)


def plant_metadata(dataset_dir: Path, schema: pa.Schema, marker: Path) -> None:
    """``_common_metadata`` whose Unischema and row-group index are the payload."""
    evil = exec_payload(marker)
    pq.write_metadata(schema.with_metadata({UNISCHEMA_KEY: evil, ROWGROUPS_INDEX_KEY: evil}),
                      str(dataset_dir / "_common_metadata"))


def add_extension_column(path: Path, marker: Path) -> None:
    """Rewrite a Parquet file with one more column whose type is a pickled
    extension type holding the payload: the field metadata pyarrow writes for
    a ``PyExtensionType`` (its name and its pickle, stored in the footer's
    Arrow schema), written directly so it works on every pyarrow."""
    t = pq.read_table(str(path))
    field = pa.field("evil", pa.int64(), metadata={
        b"ARROW:extension:name": b"arrow.py_extension_type",
        b"ARROW:extension:metadata": exec_payload(marker)})
    pq.write_table(t.append_column(field, pa.array(range(t.num_rows), pa.int64())), str(path))


@pytest.fixture
def planted(tmp_path):
    """A plain Parquet dataset with the payload in ``_common_metadata`` and in
    its one data file's footer; markers for each."""
    ds = tmp_path / "ds"
    ds.mkdir()
    pq.write_table(pa.table({"x": pa.array(range(6), pa.int64())}), str(ds / "part-0.parquet"))
    meta_marker, ext_marker = tmp_path / "ran-from-metadata", tmp_path / "ran-from-footer"
    plant_metadata(ds, pq.read_schema(str(ds / "part-0.parquet")), meta_marker)
    add_extension_column(ds / "part-0.parquet", ext_marker)
    return ds, meta_marker, ext_marker


# --------------------------------------------------------------------------- the threat, without the guard
def test_without_the_guard_the_planted_pickles_run(planted):
    """Control: petastorm opening the dataset runs the metadata payload, and
    pyarrow with extension auto-load on runs the footer's (a fresh process:
    the guard is process-wide once installed). pyarrow without pickled
    extension types (23.0.1, the pin) never runs the footer's."""
    ds, meta_marker, ext_marker = planted
    script = textwrap.dedent(f"""
        import pyarrow as pa, pyarrow.parquet as pq
        from petastorm import make_batch_reader
        try:
            make_batch_reader({"file://" + str(ds)!r}, workers_count=1).stop()
        except Exception:
            pass   # the payload returns None, not a schema: petastorm fails after it ran
        if hasattr(pa, "PyExtensionType"):
            pa.PyExtensionType.set_auto_load(True)
        try:
            pq.read_table({str(ds / "part-0.parquet")!r})
        except AttributeError:
            pass   # likewise: the payload is not an extension type
    """)
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True, timeout=120)
    assert meta_marker.read_text() == "code ran"
    if PICKLED_EXTENSIONS:
        assert ext_marker.read_text() == "code ran"
    else:
        assert not ext_marker.exists()


# --------------------------------------------------------------------------- the guard
def test_guarded_petastorm_refuses_the_planted_metadata_in_one_line(planted):
    from petastorm import make_batch_reader

    ds, meta_marker, ext_marker = planted
    guard_petastorm_unpickling()
    with pytest.raises(TamperedCacheError, match=r"petastorm metadata names builtins\.exec, ") as e:
        make_batch_reader("file://" + str(ds), workers_count=1)
    assert isinstance(e.value, CorruptArtifactError) and isinstance(e.value, CourierError)
    assert "\n" not in str(e.value)
    assert not meta_marker.exists()


def test_guard_keeps_pickled_extension_types_undeserialised(planted):
    ds, meta_marker, ext_marker = planted
    extension_auto_load(True)        # as a careless library might
    guard_petastorm_unpickling()     # idempotent: switches it off again
    with reading_pickled_extensions():
        t = pq.read_table(str(ds / "part-0.parquet"))
        assert t.column("x").to_pylist() == list(range(6))       # the data is still read
        evil = t.schema.field("evil")
        if PICKLED_EXTENSIONS:
            assert type(evil.type).__name__ == "UnknownExtensionType"
        else:   # no pickled extension types: the plain storage column, the pickle left as bytes
            assert evil.type == pa.int64() and t.column("evil").to_pylist() == list(range(6))
            assert evil.metadata[b"ARROW:extension:name"] == b"arrow.py_extension_type"
    assert not ext_marker.exists()


def test_genuine_petastorm_schemas_and_indexes_still_load():
    """A real Unischema (every codec petastorm ships without OpenCV, numpy,
    Spark and Decimal types) and row-group indexes, at every pickle protocol."""
    from decimal import Decimal

    from petastorm.codecs import CompressedNdarrayCodec, NdarrayCodec, ScalarCodec
    from petastorm.etl.legacy import depickle_legacy_package_name_compatible
    from petastorm.etl.rowgroup_indexers import FieldNotNullIndexer, SingleFieldIndexer
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import DecimalType, LongType, StringType

    guard_petastorm_unpickling()
    schema = Unischema("Rows", [
        UnischemaField("id", np.int64, (), ScalarCodec(LongType()), False),
        UnischemaField("name", np.str_, (), ScalarCodec(StringType()), True),
        UnischemaField("price", Decimal, (), ScalarCodec(DecimalType(10, 2)), True),
        UnischemaField("vec", np.float32, (4,), NdarrayCodec(), False),
        UnischemaField("mat", np.uint8, (None, 3), CompressedNdarrayCodec(), False),
        UnischemaField("ids", np.int32, (None,), None, False)])
    index = SingleFieldIndexer("by_id", "id")
    index.build_index([{"id": 1}, {"id": 2}, {"id": 1}], 0)
    indexes = {"by_id": index, "nn": FieldNotNullIndexer("nn", "name")}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        got = depickle_legacy_package_name_compatible(pickle.dumps(schema, protocol))
        assert isinstance(got, Unischema) and got.fields == schema.fields, protocol
        got_ix = depickle_legacy_package_name_compatible(pickle.dumps(indexes, protocol))
        assert got_ix["by_id"].get_row_group_indexes(1) == {0}, protocol


@pytest.mark.parametrize("payload", [
    "builtins.eval", "builtins.getattr", "builtins.open", "posix.system", "subprocess.Popen",
    "collections.namedtuple", "builtins.object.__subclasses__", "numpy.testing",
    "petastorm.workers_pool.exec_in_new_process.exec_in_new_process", "pyspark.sql.types._parse_datatype_json_string",
])
def test_guard_refuses_every_global_outside_the_schema_classes(payload, tmp_path):
    """Globals petastorm's own list lets through (builtins, collections,
    petastorm, pyspark, numpy), an attribute walk, and plain code: refused
    before anything is imported or called."""
    from petastorm.etl.legacy import depickle_legacy_package_name_compatible

    guard_petastorm_unpickling()
    module, _, name = payload.partition(".")
    if module in ("petastorm", "pyspark"):
        module, _, name = payload.rpartition(".")
    # protocol 4: STACK_GLOBAL module name, then call it with no arguments
    raw = (b"\x80\x04" + b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)])
           + name.encode() + b"\x93)R.")
    with pytest.raises(TamperedCacheError, match=re.escape(f"names {module}.{name}, ")):
        depickle_legacy_package_name_compatible(raw)


# --------------------------------------------------------------------------- the loader on a real cache
@pytest.fixture
def frames(spark):
    items = spark.createDataFrame(pd.DataFrame({"item_id": [1, 2, 3], "image": [png((i * 60, 0, 0)) for i in (1, 2, 3)]}),
                                  "item_id long, image binary")
    rows = [(f"r{i}", [1 + i % 3, 1 + (i + 1) % 3], [1, 0], [1 + (i + 2) % 3]) for i in range(24)]
    samples = spark.createDataFrame(rows, "request_id string, pv_item_ids array<long>, pv_labels array<int>, "
                                          "hist_item_ids array<long>")
    return pretrain_training_frame(samples, 2, 2), items


@pytest.mark.filterwarnings("ignore:Column 'evil' has an unsupported field:UserWarning")   # petastorm skips it
def test_loader_on_a_tampered_cache_runs_no_code(spark, frames, tmp_path):
    """SampleLoader over a real petastorm cache with the payload planted in
    the dataset's and the cache's ``_common_metadata`` and in the footer of
    every file it reads, the images table's included (extension auto-load
    switched on beforehand): every row is
    read and nothing runs. The same converter reduced to one file, that file
    replaced by a directory holding the planted metadata (the one path
    petastorm then opens as a dataset): one ``TamperedCacheError`` line
    naming the cache, and nothing runs."""
    from petastorm.spark import make_spark_converter

    frame, items = frames
    cache = tmp_path / "cache"
    spec = LoaderSpec(l_pv=2, l_click=2, image_size=8, batch_size=4)
    loader = SampleLoader.from_frame(frame, items, spec, str(cache))
    single = None
    meta_marker, ext_marker = tmp_path / "ran-from-metadata", tmp_path / "ran-from-footer"
    try:
        files = [Path(u.removeprefix("file://").removeprefix("file:")) for u in loader.converter.file_urls]
        dataset = files[0].parent
        schema = pq.read_schema(str(files[0]))
        plant_metadata(dataset, schema, meta_marker)
        plant_metadata(cache, schema, meta_marker)
        for f in files + sorted(Path(loader.images_url.removeprefix("file:")).glob("*.parquet")):
            add_extension_column(f, ext_marker)   # the id frame's files and the images table's
        extension_auto_load(True)
        with reading_pickled_extensions():
            batches = list(loader.batches(num_epochs=1, workers=1, seed=0))
        assert sum(b["pv_labels"].shape[0] for b in batches) == 24          # every row, once
        assert sum(int(b["pv_labels"].sum()) for b in batches) == 24        # one click per page
        assert not meta_marker.exists() and not ext_marker.exists()

        single = SampleLoader(make_spark_converter(frame.coalesce(1), parquet_row_group_size_bytes=1 << 10),
                              spec, loader.images_url)
        assert len(single.converter.file_urls) == 1 and len(single) == 24
        only = Path(single.converter.file_urls[0].removeprefix("file://").removeprefix("file:"))
        moved = only.with_name("moved.parquet")
        os.rename(only, moved)
        only.mkdir()
        os.rename(moved, only / "part-0.parquet")
        plant_metadata(only, schema, meta_marker)
        with pytest.raises(TamperedCacheError) as e:
            next(single.batches(num_epochs=1, workers=1, seed=0))
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(single.converter.cache_dir_url + ": ")
        assert "builtins.exec" in msg and "delete it and re-run" in msg
        assert not meta_marker.exists()
    finally:
        extension_auto_load(False)
        if single is not None:
            single.converter.delete()
        loader.delete()
