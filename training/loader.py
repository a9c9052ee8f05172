"""The training data path, behind one small interface so the loader can be
swapped (petastorm is unmaintained upstream; Mosaic Streaming or a plain
parquet reader would slot in behind ``SampleLoader``).

Spark side: ``pretrain_training_frame`` pads each page view's shown items,
labels and history clicks to fixed-length id arrays; no images. Loader side:
petastorm materialises that frame once (``make_spark_converter``, a few dozen
bytes a row) and every worker reads its own shard. Item images are written
once, next to it, as their own small Parquet table (``item_id, image``), and
each worker process decodes it once into uint8 pixels (``DecodedItems``, the
same decode the embedding job uses); a step looks its slots up by id and
hands the model each distinct item once (an *indexed* batch). Measured
before (bench/bench_petastorm_bytes.py): a frame that carried every slot's
PNG copied each image 32x on the default data and 104x on the large preset
(15.9 GB, 160 s of a 284 s train stage).
"""
from __future__ import annotations

import atexit
import uuid
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from courier_spark.core import fs
from courier_spark.core.errors import TamperedCacheError

from .images import decode_pixels, normalise


# Padding of the id arrays: no item has this id (null elements would not survive
# petastorm's conversion of array columns to numpy).
PAD_ID = -(2 ** 63)


def _padded(col: str, n: int, fill) -> F.Column:
    """The first ``n`` elements of array column ``col``, padded with ``fill`` to length ``n``."""
    return F.concat(F.slice(col, 1, n),
                    F.array_repeat(fill, F.greatest(F.lit(0), F.lit(n) - F.size(col))))


def pretrain_training_frame(samples: DataFrame, l_pv: int, l_click: int, with_user: bool = False) -> DataFrame:
    """Pre-training samples -> one row per page: ``request_id``, ``pv_labels``
    (int[l_pv], 0 in padding), ``pv_ids`` (long[l_pv]) and ``hist_ids``
    (long[l_click]), padded with ``PAD_ID``, and ``user_id`` with ``with_user``
    (the supervised CTR model's input; other methods keep today's frame, so
    their petastorm row groups, and batches, do not move). Images are looked
    up by id in the loader; an item without a usable image becomes a masked
    slot, like padding."""
    pad = F.lit(PAD_ID).cast("long")
    cols = [_padded("pv_labels", l_pv, F.lit(0)).alias("pv_labels"),
            _padded("pv_item_ids", l_pv, pad).cast("array<long>").alias("pv_ids"),
            _padded("hist_item_ids", l_click, pad).cast("array<long>").alias("hist_ids")]
    if with_user:
        cols.append(F.col("user_id").cast("long").alias("user_id"))
    return samples.select("request_id", *cols)


def item_images_frame(items: DataFrame, attributes: bool = False) -> DataFrame:
    """``item_id, image`` (+ ``category, title`` with ``attributes``) of every
    item that has an image: what the loader keeps in memory."""
    extra = ["category", "title"] if attributes else []
    return items.select(F.col("item_id").cast("long"), "image", *extra).filter(F.col("image").isNotNull())


def split_heldout(frame: DataFrame, share: float, seed: int = 0) -> tuple[DataFrame, DataFrame]:
    """``frame`` -> (training rows, held-out rows): a page view is held out
    when a seeded hash of its ``request_id`` falls in the first ``share`` of
    the hash range, so the split is stable across runs and methods."""
    bucket = F.pmod(F.xxhash64(F.lit(seed), "request_id"), F.lit(1_000_000)) < F.lit(int(share * 1_000_000))
    return frame.filter(~bucket), frame.filter(bucket)


def heldout_arrays(heldout: DataFrame) -> dict[str, np.ndarray]:
    """Held-out id frame -> ``pv_ids``, ``hist_ids``, ``pv_labels`` (and
    ``user_id`` when the frame has it) arrays, ordered by request_id."""
    pdf = heldout.orderBy("request_id").toPandas()
    if not len(pdf):
        return {k: np.zeros((0, 0), np.int64) for k in ("pv_ids", "hist_ids", "pv_labels")}
    out = {k: np.stack([np.asarray(v, np.int64) for v in pdf[k]]) for k in ("pv_ids", "hist_ids", "pv_labels")}
    if "user_id" in pdf:
        out["user_id"] = pdf["user_id"].to_numpy(np.int64)
    return out


class DecodedItems:
    """Every item image decoded once, kept as uint8 pixels ``[N, 3, S, S]``
    beside its sorted ids (about 7 KB an item at 48 px: 62 MB for 9,000
    items), so a training step only looks rows up, gathers and normalises.
    Decoding every slot at every step (the loader before) cost more than the
    encoder's own forward and backward (bench/bench_training_speed.py)."""

    def __init__(self, ids: np.ndarray, pixels: torch.Tensor, valid: np.ndarray,
                 attributes: dict[str, np.ndarray] | None = None) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        self.pixels = pixels[torch.from_numpy(order)] if len(order) else pixels
        self.valid = np.asarray(valid, dtype=bool)[order]
        # Per item, in id order: ``cat`` [N] and ``tok`` [N, T] hashed codes
        # (``training.supervised_ctr``), for the supervised CTR model only.
        self.attributes = None if attributes is None else {k: np.asarray(v)[order] for k, v in attributes.items()}

    @classmethod
    def decode(cls, ids, images, size: int, attributes: dict[str, np.ndarray] | None = None) -> "DecodedItems":
        """``ids`` and their encoded images (bytes, None or an Arrow binary
        array) -> the decoded table; a missing or undecodable image is kept as
        an invalid row (its slots are masked, like padding)."""
        n = len(ids)
        pixels = np.zeros((n, 3, size, size), np.uint8)
        valid = np.zeros(n, bool)
        for row in range(n):
            data = images[row]
            if data is not None and not isinstance(data, (bytes, bytearray)):
                data = data.as_py()   # an Arrow scalar
            px = decode_pixels(data, size)
            if px is not None:
                pixels[row], valid[row] = px, True
        return cls(np.asarray(ids, np.int64), torch.from_numpy(pixels), valid, attributes)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (any shape), -1 where the id is unknown, padding or has no usable image."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        if not len(self.ids):
            return np.full(np.shape(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, flat), len(self.ids) - 1)
        ok = (self.ids[pos] == flat) & self.valid[pos]
        return np.where(ok, pos, -1).reshape(np.shape(ids))

    def batch(self, pv_ids: np.ndarray, hist_ids: np.ndarray, pv_labels: np.ndarray,
              user_ids: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Id arrays ``[B, Lpv]``, ``[B, Lc]`` -> an *indexed* batch: ``items``
        (each distinct item of the batch once, normalised float32
        ``[U, 3, S, S]``), ``pv_slot`` / ``hist_slot`` (row in ``items``, -1
        for a masked slot), ``pv_mask`` / ``hist_mask`` and ``pv_labels``.
        The model encodes each distinct item once; ``slot_images`` gives the
        per-slot layout where a loss needs one. With attributes and
        ``user_ids`` (the supervised CTR model): the raw ids too, whether each
        history id is a real click (``hist_known``), and each slot's hashed
        category and title tokens (0 where the item has no usable image)."""
        pv_rows, hist_rows = self.rows(pv_ids), self.rows(hist_ids)
        both = np.concatenate([pv_rows.ravel(), hist_rows.ravel()])
        used = both >= 0
        distinct, inverse = np.unique(both[used], return_inverse=True)
        slot = np.full(both.shape, -1, np.int64)
        slot[used] = inverse
        n_pv = pv_rows.size
        pv_slot = torch.from_numpy(slot[:n_pv].reshape(pv_rows.shape))
        hist_slot = torch.from_numpy(slot[n_pv:].reshape(hist_rows.shape))
        out = {"items": normalise(self.pixels[torch.from_numpy(distinct)]),
               "pv_slot": pv_slot, "pv_mask": pv_slot >= 0,
               "hist_slot": hist_slot, "hist_mask": hist_slot >= 0,
               "pv_labels": torch.as_tensor(np.asarray(pv_labels, dtype=np.int64))}
        if self.attributes is not None and user_ids is not None:
            out.update(self._ctr_fields(pv_ids, hist_ids, pv_rows, hist_rows, user_ids))
        return out

    def _ctr_fields(self, pv_ids: np.ndarray, hist_ids: np.ndarray, pv_rows: np.ndarray, hist_rows: np.ndarray,
                    user_ids: np.ndarray) -> dict[str, torch.Tensor]:
        a = self.attributes
        out = {"pv_ids": torch.as_tensor(np.asarray(pv_ids, np.int64)),
               "hist_ids": torch.as_tensor(np.asarray(hist_ids, np.int64)),
               "hist_known": torch.as_tensor(np.asarray(hist_ids, np.int64) != PAD_ID),
               "user_ids": torch.as_tensor(np.asarray(user_ids, np.int64))}
        for kind, rows in (("pv", pv_rows), ("hist", hist_rows)):
            at = np.maximum(rows, 0)
            ok = rows >= 0
            out[f"{kind}_cat"] = torch.from_numpy(np.where(ok, a["cat"][at], 0))
            out[f"{kind}_tok"] = torch.from_numpy(np.where(ok[..., None], a["tok"][at], 0))
        return out


def slot_images(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An indexed batch (``DecodedItems.batch``) with ``pv_images`` /
    ``hist_images`` ``[B, L, 3, S, S]`` added (zeros in masked slots); a batch
    that has them already is returned as it is."""
    if "pv_images" in batch:
        return batch
    items = batch["items"]
    out = dict(batch)
    for kind in ("pv", "hist"):
        slot = batch[f"{kind}_slot"]
        if items.shape[0]:
            x = items[slot.clamp_min(0)]
            x = x * (slot >= 0)[..., None, None, None].to(x.dtype)
        else:
            x = items.new_zeros((*slot.shape, *items.shape[1:]))
        out[f"{kind}_images"] = x
    return out


# Per worker process: (images table URL, side) -> the decoded items.
_DECODED: dict[tuple[str, int], DecodedItems] = {}


def load_decoded_items(url: str, size: int) -> DecodedItems:
    """The images table the loader wrote at ``url``, decoded at ``size`` px
    once per process (9,000 items at 48 px: about 2.5 s on one core)."""
    key = (url, size)
    if key not in _DECODED:
        guard_petastorm_unpickling()   # the table's footers too are read as data only
        import pyarrow as pa
        import pyarrow.parquet as pq
        parts = []
        for f in fs.glob(fs.join(url, "*.parquet")):
            with fs.open_read(f) as fh:   # closed at once: a worker keeps only the decoded pixels
                parts.append(pq.read_table(fh))
        t = pa.concat_tables(parts) if parts else pa.table({"item_id": pa.array([], pa.int64()),
                                                           "image": pa.array([], pa.binary())})
        images = t.column("image").combine_chunks()
        attributes = None
        if "category" in t.column_names:   # item_images_frame(attributes=True)
            from .supervised_ctr import category_codes, title_codes
            attributes = {"cat": category_codes(t.column("category").to_pylist()),
                          "tok": title_codes(t.column("title").to_pylist())}
        _DECODED.clear()   # one training run per process at a time
        _DECODED[key] = DecodedItems.decode(np.asarray(t.column("item_id").to_pylist(), np.int64),
                                            images, size, attributes)
    return _DECODED[key]


def guard_petastorm_end_of_read() -> None:
    """Close a race in petastorm 0.13.1's thread pool that ends a finite read
    early. ``ThreadPool.get_results`` stops when every worker has returned
    what it was sent *and then* the ventilator says it has sent everything;
    if the ventilator thread sends the rest between those two checks (it
    may, whenever the remaining row groups fit its queue), the read ends
    without them: a one-epoch read in CI once gave 0 of 64 rows. Here
    "done" also requires the ventilator to have finished *before* the
    workers were counted. Infinite reads (training) never end this way;
    the guard is idempotent. third_party/petastorm's patch makes the same
    check inside the pool, so with the patched wheel (what bootstrap.sh
    installs) this is redundant; it stays for a petastorm as released (an
    executor image that installed its own)."""
    from petastorm.workers_pool.thread_pool import ThreadPool
    if getattr(ThreadPool, "_courier_end_of_read_guard", False):
        return
    counted = ThreadPool.all_workers_done

    def all_workers_done(self) -> bool:
        finished_before = self._ventilator is None or self._ventilator.completed()
        return counted(self) and finished_before

    ThreadPool.all_workers_done = all_workers_done
    ThreadPool._courier_end_of_read_guard = True


# The globals a genuine petastorm pickle names: a ``Unischema`` (fields,
# codecs, numpy / Spark / Decimal types) or a row-group index. Python 2 names
# (``__builtin__``, ``copy_reg``) are checked as their Python 3 names. Only
# data types and constructors of plain values: no function that reaches the
# interpreter, the filesystem or an import (eval, exec, getattr, open,
# os.system, collections.namedtuple, ...).
_PICKLE_GLOBALS = frozenset({
    ("petastorm.unischema", "Unischema"), ("petastorm.unischema", "UnischemaField"),
    ("petastorm.codecs", "ScalarCodec"), ("petastorm.codecs", "NdarrayCodec"),
    ("petastorm.codecs", "CompressedNdarrayCodec"), ("petastorm.codecs", "CompressedImageCodec"),
    ("petastorm.etl.rowgroup_indexers", "SingleFieldIndexer"),
    ("petastorm.etl.rowgroup_indexers", "FieldNotNullIndexer"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("decimal", "Decimal"),
    ("copyreg", "_reconstructor"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),   # protocol 5 arrays
    *(("builtins", t) for t in ("object", "tuple", "list", "dict", "set", "frozenset", "bytes",
                                "bytearray", "str", "int", "float", "complex", "bool")),
})


def _python3_global(module: str, name: str) -> tuple[str, str]:
    """A pickle's global as Python 3 names it (protocols 0-2 write Python 2 names)."""
    import _compat_pickle
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _pickle_global_allowed(module: str, name: str) -> bool:
    """Whether a petastorm metadata pickle may name ``module.name`` (Python 3
    names): the exact list above, a numpy scalar or dtype class, or a Spark
    SQL data type. The module is looked in only when it is numpy's or
    Spark's own, already imported."""
    if (module, name) in _PICKLE_GLOBALS:
        return True
    if not name.isidentifier():     # protocol 4 allows dotted names: an attribute walk
        return False
    if module in ("numpy", "numpy.dtypes"):
        import numpy
        cls = vars(numpy if module == "numpy" else numpy.dtypes).get(name)   # no lazy submodule imports
        return isinstance(cls, type) and issubclass(cls, (numpy.generic, numpy.dtype))
    if module == "pyspark.sql.types":
        from pyspark.sql import types
        cls = vars(types).get(name)
        return isinstance(cls, type) and issubclass(cls, (types.DataType, types.StructField))
    return False


def guard_petastorm_unpickling() -> None:
    """Make every pickle petastorm reads from a dataset data, never code.

    petastorm 0.13.1 unpickles what a dataset's ``_common_metadata`` holds
    (the Unischema, row-group indexes) with ``RestrictedUnpickler``, which
    lets through all of ``builtins`` (``exec``, ``eval``, ``getattr``,
    ``open``) and ``collections``: a ``_common_metadata`` planted in
    ``<root>/_cache/petastorm`` on a shared store would run code in the
    training job. (``SampleLoader`` hands petastorm the converter's file
    list, for which pyarrow opens no ``_common_metadata``, unless that list
    is one path and the path is a directory, a rule of pyarrow's; the
    guard makes it not matter what path petastorm is given.)

    Why this mechanism: the cache must sit on a store every executor reads
    (on a cluster the ranks run there), so a private, driver-local 0700
    scratch directory does not work; hashing the files into a manifest
    costs every worker a second full read and still leaves petastorm's
    unpickler open to whatever it reads beside them. Here the one place
    petastorm unpickles (``RestrictedUnpickler.find_class``, used by
    ``depickle_legacy_package_name_compatible`` for schemas and indexes) is
    narrowed to the globals a genuine schema names (``_PICKLE_GLOBALS``),
    checked before any import, so a genuine petastorm dataset still loads
    and anything else is a ``TamperedCacheError`` before it can run. The
    other pickle a Parquet footer can carry, a ``pyarrow.PyExtensionType``,
    is kept undeserialised (pyarrow's default since 14.0.1, enforced here).
    The guard is idempotent; every process that reads calls it."""
    import pyarrow as pa
    from petastorm.etl import legacy

    if hasattr(pa, "PyExtensionType"):   # gone from newer pyarrow, which never deserialises them
        pa.PyExtensionType.set_auto_load(False)
    if getattr(legacy.RestrictedUnpickler, "_courier_strict_globals", False):
        return
    names = legacy.RestrictedUnpickler.find_class

    def find_class(self, module: str, name: str):
        if not _pickle_global_allowed(*_python3_global(module, name)):
            shown = ".".join(_python3_global(module, name))
            raise TamperedCacheError(f"petastorm metadata names {shown}, which no petastorm schema "
                                     f"holds: not unpickled (the cache was written by something other than "
                                     f"this job; delete it and re-run)")
        return names(self, module, name)   # petastorm's own check too: a genuine schema passes both

    legacy.RestrictedUnpickler.find_class = find_class
    legacy.RestrictedUnpickler._courier_strict_globals = True


@dataclass
class LoaderSpec:
    l_pv: int
    l_click: int
    image_size: int
    batch_size: int
    # The supervised CTR model's inputs: user ids through petastorm, item
    # categories and titles beside the images (``pretrain_training_frame(with_user=True)``).
    ctr_fields: bool = False


class SampleLoader:
    """Petastorm-backed loader. It is picklable (the converter and two URLs),
    so it can be sent to Horovod / TorchDistributor workers; each worker calls
    ``batches``."""

    # ~32 id-frame rows per row group: petastorm shuffles and shards by row
    # group, and a row group is also its unit of decoded output (32 rows x 10
    # slots x 3 x 64 x 64 float32 = 16 MB, a few copies of it in flight per
    # reader thread). (Frames that carried image blobs needed parquet-mr's
    # size checks tightened to keep row groups near this; uniform small rows
    # do not.)
    ROW_GROUP_BYTES = 8 << 10
    # Decoded row groups petastorm may hold ready per worker process (its
    # default is 50): with 256-row groups a Horovod rank held 4.5 GB on the
    # large preset. A few keep the loader ahead of the model.
    RESULTS_QUEUE_SIZE = 8

    def __init__(self, converter, spec: LoaderSpec, images_url: str,
                 heldout: dict[str, np.ndarray] | None = None) -> None:
        self.converter = converter
        self.spec = spec
        self.images_url = images_url
        self.heldout = heldout   # id arrays of the held-out page views (``split_heldout``), or None

    @classmethod
    def from_frame(cls, df: DataFrame, images: DataFrame, spec: LoaderSpec, cache_dir: str,
                   num_shards: int = 1, heldout: DataFrame | None = None) -> "SampleLoader":
        """Materialise the id frame (``pretrain_training_frame``) with petastorm
        under ``cache_dir`` and the ``item_id, image`` table beside it, once.
        ``heldout``: page views (same columns) kept out of training, whose
        loss the workers report (a few hundred rows; collected here)."""
        from petastorm.spark import SparkDatasetConverter, make_spark_converter
        from petastorm.spark.spark_dataset_converter import register_delete_dir_handler
        # petastorm's own handler opens the store with no options (on WebHDFS:
        # as the anonymous user, who may not delete); ours is the project's layer.
        register_delete_dir_handler(lambda url: fs.rm(url, recursive=True))
        spark = df.sparkSession
        spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF,
                       cache_dir if "://" in cache_dir else "file://" + cache_dir)
        images_url = fs.join(cache_dir, f"images-{uuid.uuid4().hex}")
        item_images_frame(images, spec.ctr_fields).coalesce(1).write.mode("overwrite").parquet(images_url)
        # A loader that is kept (consecutive trainings share petastorm's
        # cached frame) is never deleted; like petastorm's own cache, its
        # images go when the process exits. (rm of a missing path is a no-op.)
        atexit.register(fs.rm, images_url, True)
        # Petastorm shards by parquet row group: every worker needs several,
        # so write a few files with small row groups.
        df = df.repartition(max(4, 4 * num_shards))
        try:
            converter = make_spark_converter(df, parquet_row_group_size_bytes=cls.ROW_GROUP_BYTES)
        except BaseException:
            fs.rm(images_url, recursive=True)
            raise
        return cls(converter, spec, images_url, None if heldout is None else heldout_arrays(heldout))

    def __len__(self) -> int:
        return len(self.converter)

    def _transform_spec(self):
        from petastorm import TransformSpec
        # Only the id arrays travel through petastorm; images come from the
        # worker's decoded table (``load_decoded_items``), looked up per batch.
        fields = ["pv_labels", "pv_ids", "hist_ids"] + (["user_id"] if self.spec.ctr_fields else [])
        return TransformSpec(lambda pdf: pdf[fields], selected_fields=fields)

    def _reader_options(self) -> dict:
        url = self.converter.cache_dir_url
        if fs.is_local(url) or fs.to_fsspec(url)[0] == "hdfs":
            return {}   # petastorm's own local / libhdfs paths
        # The project's fsspec filesystem (store options, credentials) as it is:
        # the patched petastorm (third_party/petastorm, compat.as_fsspec) reads
        # through fsspec, so no pyarrow legacy wrapper (gone in pyarrow 16) is needed.
        return {"filesystem": fs.filesystem(url)[0]}

    def batches(self, shard: int = 0, num_shards: int = 1, num_epochs: int | None = None,
                workers: int = 2, seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Full batches only (every worker must see equal shapes for the
        global-negative gather); infinite when ``num_epochs`` is None."""
        bs = self.spec.batch_size
        guard_petastorm_unpickling()
        items = load_decoded_items(self.images_url, self.spec.image_size)
        guard_petastorm_end_of_read()
        try:
            with self.converter.make_torch_dataloader(
                    batch_size=bs, num_epochs=num_epochs, cur_shard=shard, shard_count=num_shards,
                    workers_count=max(1, workers), transform_spec=self._transform_spec(),
                    shuffling_queue_capacity=4 * bs, seed=seed, results_queue_size=self.RESULTS_QUEUE_SIZE,
                    **self._reader_options()) as dl:
                for b in dl:
                    if b["pv_labels"].shape[0] != bs:
                        continue
                    yield items.batch(b["pv_ids"].numpy(), b["hist_ids"].numpy(), b["pv_labels"].numpy(),
                                      b["user_id"].numpy() if "user_id" in b else None)
        except TamperedCacheError as e:   # raised where petastorm opens the dataset: name it
            raise TamperedCacheError(f"{self.converter.cache_dir_url}: {e}") from None

    def heldout_batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """The held-out page views (``heldout``) as indexed batches of
        ``batch_size`` pages, the last partial batch dropped (every batch then
        has the in-batch negatives of a global training batch)."""
        if self.heldout is None:
            return []
        items = load_decoded_items(self.images_url, self.spec.image_size)
        h, n = self.heldout, len(self.heldout["pv_labels"])
        return [items.batch(h["pv_ids"][i:i + batch_size], h["hist_ids"][i:i + batch_size],
                            h["pv_labels"][i:i + batch_size],
                            h["user_id"][i:i + batch_size] if "user_id" in h else None)
                for i in range(0, n - batch_size + 1, batch_size)]

    def delete(self) -> None:
        self.converter.delete()
        fs.rm(self.images_url, recursive=True)
