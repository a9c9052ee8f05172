"""The petastorm read paths the platform uses (training/loader.py), on real
Spark and petastorm: a converter of a small frame with ``array<long>``
columns, read back as a file list and as a directory, in disjoint shards,
shuffled with a seed, through a ``TransformSpec``, to the end of several
epochs, through the torch dataloader, and from a tampered cache.

They pass on petastorm 0.13.1 as released (pyarrow 12-14, numpy 1) and on it
with third_party/petastorm's patch (there also on pyarrow >= 15 and numpy 2;
third_party/petastorm/README.md has the runs). On unpatched petastorm the
end-of-read race needs the project's guard, which the tests then install."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

N_ROWS, L_PV, L_CLICK = 96, 4, 3
PAD = -(2 ** 63)   # training.loader.PAD_ID
FIELDS = ["pv_labels", "pv_ids", "hist_ids"]   # what SampleLoader's TransformSpec keeps


def patched() -> bool:
    """Whether this petastorm carries third_party/petastorm's patch."""
    import importlib.util
    return importlib.util.find_spec("petastorm.compat") is not None


def end_of_read_safe() -> None:
    """Unpatched petastorm 0.13.1 can end a finite read early (see
    ``training.loader.guard_petastorm_end_of_read``); the patch fixes it in
    the thread pool, so only unpatched petastorm gets the project's guard."""
    if not patched():
        from training.loader import guard_petastorm_end_of_read
        guard_petastorm_end_of_read()


def expected_row(i: int) -> dict:
    """Row ``i`` of the frame: ids that name the row, padded like ``pretrain_training_frame``."""
    return {"row": i, "request_id": f"r{i:03d}",
            "pv_labels": [1] + [0] * (L_PV - 1),
            "pv_ids": [1000 * i + k for k in range(L_PV - 1)] + [PAD],
            "hist_ids": [7 * i] + [PAD] * (L_CLICK - 1)}


@pytest.fixture(scope="module")
def converter(pst_spark, tmp_path_factory):
    """A converter of the frame: 8 files (``repartition``), so 8+ row groups to shard and shuffle."""
    from petastorm.spark import SparkDatasetConverter, make_spark_converter
    cache = tmp_path_factory.mktemp("petastorm-cache")
    pst_spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, "file://" + str(cache))
    rows = [expected_row(i) for i in range(N_ROWS)]
    df = pst_spark.createDataFrame(
        [(r["row"], r["request_id"], r["pv_labels"], r["pv_ids"], r["hist_ids"]) for r in rows],
        "row long, request_id string, pv_labels array<int>, pv_ids array<long>, hist_ids array<long>")
    conv = make_spark_converter(df.repartition(8), parquet_row_group_size_bytes=1 << 10)
    yield conv
    conv.delete()


def read(url_or_urls, num_epochs=1, **kwargs) -> list:
    """Every batch of a finite ``make_batch_reader`` read, as the batches' namedtuples."""
    from petastorm import make_batch_reader
    end_of_read_safe()
    kwargs.setdefault("workers_count", 2)
    with make_batch_reader(url_or_urls, num_epochs=num_epochs, **kwargs) as reader:
        return list(reader)


def rows_of(batches) -> list[int]:
    return [int(x) for b in batches for x in b.row]


# --------------------------------------------------------------------------- file lists and directories
def test_file_list_and_directory_read_every_row_with_its_arrays(converter):
    assert len(converter) == N_ROWS and len(converter.file_urls) == 8
    for source in (converter.file_urls, converter.cache_dir_url):
        batches = read(source, shuffle_row_groups=False)
        assert sorted(rows_of(batches)) == list(range(N_ROWS))
        for b in batches:
            assert b.pv_ids.dtype == np.int64 and b.pv_ids.shape == (len(b.row), L_PV)
            assert b.hist_ids.shape == (len(b.row), L_CLICK)
            for j, i in enumerate(b.row):
                want = expected_row(int(i))
                assert b.pv_ids[j].tolist() == want["pv_ids"]
                assert b.hist_ids[j].tolist() == want["hist_ids"]
                assert b.pv_labels[j].tolist() == want["pv_labels"]
                assert str(b.request_id[j]) == want["request_id"]


def test_one_file_url_reads_that_file(converter):
    one = converter.file_urls[0]
    got = rows_of(read(one))
    assert got and len(set(got)) == len(got) and set(got) < set(range(N_ROWS))


# --------------------------------------------------------------------------- shards, shuffling, fields
def test_shards_are_disjoint_and_cover_every_row(converter):
    shards = [rows_of(read(converter.file_urls, cur_shard=s, shard_count=3, shuffle_row_groups=False))
              for s in range(3)]
    assert all(shards)
    assert sorted(r for s in shards for r in s) == list(range(N_ROWS))   # disjoint and covering


def test_seeded_shuffle_is_a_permutation_and_repeats_with_the_seed(converter):
    plain = rows_of(read(converter.file_urls, shuffle_row_groups=False, workers_count=1))
    # one worker: with two, a busy machine can let a result queue time out and the round robin move on
    first = rows_of(read(converter.file_urls, shuffle_row_groups=True, seed=11, workers_count=1))
    again = rows_of(read(converter.file_urls, shuffle_row_groups=True, seed=11, workers_count=1))
    other = rows_of(read(converter.file_urls, shuffle_row_groups=True, seed=12, workers_count=1))
    assert sorted(rows_of(read(converter.file_urls, shuffle_row_groups=True, seed=11))) == list(range(N_ROWS))
    assert sorted(first) == sorted(other) == list(range(N_ROWS))
    assert first == again
    assert first != plain or other != plain


def test_transform_spec_selects_the_fields(converter):
    from petastorm import TransformSpec
    spec = TransformSpec(lambda pdf: pdf[FIELDS], selected_fields=FIELDS)
    batches = read(converter.file_urls, transform_spec=spec)
    assert all(set(b._fields) == set(FIELDS) for b in batches)
    assert sum(len(b.pv_ids) for b in batches) == N_ROWS
    assert sorted(int(b.hist_ids[j][0]) // 7 for b in batches for j in range(len(b.hist_ids))) == list(range(N_ROWS))


# --------------------------------------------------------------------------- the end of a finite read
def test_several_epochs_are_read_to_the_end_every_time(converter):
    """Three epochs, read to the end, ten times over (a read cut short by the
    end-of-read race loses rows of the last epoch)."""
    for _ in range(10):
        got = rows_of(read(converter.file_urls, num_epochs=3, workers_count=2))
        assert sorted(got) == sorted(list(range(N_ROWS)) * 3)


@pytest.mark.skipif(not patched(), reason="the race is fixed by the patch; unpatched petastorm needs the guard "
                                          "(tests/training/test_loader.py tests that)")
def test_patched_pool_waits_for_the_ventilator_without_the_guard():
    """The schedule that lost a one-epoch read: the ventilator sends every
    item after the pool has counted its workers idle. The patched pool asks
    the ventilator first, so nothing is lost (no guard installed here)."""
    from petastorm.workers_pool import EmptyResultError
    from petastorm.workers_pool.thread_pool import ThreadPool
    from petastorm.workers_pool.ventilator import Ventilator
    from petastorm.workers_pool.worker_base import WorkerBase

    if getattr(ThreadPool, "_courier_end_of_read_guard", False):
        pytest.skip("the project's guard is installed in this process")

    class Echo(WorkerBase):
        def process(self, value):
            self.publish_func(value)

    class SendsAllWhenAsked(Ventilator):
        def __init__(self, ventilate_fn, n):
            super().__init__(ventilate_fn)
            self.n, self.sent = n, False

        def start(self):
            pass

        def processed_item(self):
            pass

        def completed(self):
            if not self.sent:
                self.sent = True
                for i in range(self.n):
                    self._ventilate_fn(value=i)
                return False
            return True

        def stop(self):
            pass

    pool = ThreadPool(1)
    pool.start(Echo, None, ventilator=SendsAllWhenAsked(pool.ventilate, 4))
    got = []
    try:
        while True:
            got.append(pool.get_results())
    except EmptyResultError:
        pass
    finally:
        pool.stop()
        pool.join()
    assert sorted(got) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- the torch dataloader
def test_torch_dataloader_shards_shuffles_and_selects_fields(converter):
    """``make_torch_dataloader`` as ``SampleLoader.batches`` calls it: two shards cover every row once."""
    pytest.importorskip("torch")
    from petastorm import TransformSpec
    end_of_read_safe()
    fields = FIELDS + ["row"]

    def shard(s, seed):
        out = []
        with converter.make_torch_dataloader(
                batch_size=8, num_epochs=1, cur_shard=s, shard_count=2, workers_count=2,
                transform_spec=TransformSpec(lambda pdf: pdf[fields], selected_fields=fields),
                shuffling_queue_capacity=32, seed=seed, results_queue_size=8) as dl:
            for b in dl:
                assert set(b) == set(fields)
                assert tuple(b["pv_ids"].shape) == (len(b["row"]), L_PV) and str(b["pv_ids"].dtype) == "torch.int64"
                assert b["hist_ids"][:, 0].tolist() == [7 * int(i) for i in b["row"]]
                out += [int(i) for i in b["row"]]
        return out

    # (the loader's shuffling queue draws from an unseeded generator: the order is not repeatable here)
    s0, s1 = shard(0, seed=3), shard(1, seed=3)
    assert s0 and s1 and sorted(s0 + s1) == list(range(N_ROWS))


# --------------------------------------------------------------------------- a tampered cache
@pytest.fixture
def tampered(converter, tmp_path):
    """The converter's files copied to a directory beside a ``_common_metadata``
    whose Unischema and row-group index are a pickle that runs code (the
    payload of tests/training/test_petastorm_cache_tamper.py); the marker it
    would write."""
    pytest.importorskip("torch")   # that module imports training.loader
    import pyarrow.parquet as pq

    from tests.training.test_petastorm_cache_tamper import plant_metadata

    ds = tmp_path / "ds"
    ds.mkdir()
    files = [Path(u.removeprefix("file://").removeprefix("file:")) for u in converter.file_urls]
    for f in files:
        shutil.copy(f, ds / f.name)
    marker = tmp_path / "ran"
    plant_metadata(ds, pq.read_schema(str(files[0])), marker)
    return ds, ["file://" + str(ds / f.name) for f in files], marker


def test_tampered_cache_read_as_a_file_list_never_opens_the_planted_pickle(tampered):
    """What SampleLoader passes (the converter's file list): every row, and
    nothing unpickled, with or without the project's guard."""
    ds, urls, marker = tampered
    assert sorted(rows_of(read(urls))) == list(range(N_ROWS))
    assert not marker.exists()


def test_tampered_cache_read_as_a_directory_is_refused_by_the_guard(tampered):
    """Read as a directory, petastorm unpickles ``_common_metadata``; the
    project's guard refuses the payload in one line, and nothing runs."""
    from courier_spark.core.errors import TamperedCacheError
    from training.loader import guard_petastorm_unpickling

    ds, urls, marker = tampered
    guard_petastorm_unpickling()
    with pytest.raises(TamperedCacheError, match=r"names builtins\.exec, "):
        read("file://" + str(ds))
    assert not marker.exists()
