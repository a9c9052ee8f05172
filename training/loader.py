"""The training data path, behind one small interface so the loader can be
swapped (petastorm is unmaintained upstream; Mosaic Streaming or a plain
parquet reader would slot in behind ``SampleLoader``).

Spark side: ``pretrain_training_frame`` joins the pre-training samples with
item images into fixed slots (``pv_img_0..``, ``hist_img_0..``), the Spark way
(posexplode + join + re-aggregate, no driver collect). Loader side: petastorm
materialises the frame once (``make_spark_converter``) and every worker reads
its own shard; the transform decodes, resizes and normalises images with
``training.images`` (the same decode the embedding job uses).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from courier_spark import fs

from .images import decode_slots


def _slot_images(samples: DataFrame, images: DataFrame, ids_col: str, prefix: str, n: int) -> DataFrame:
    """request_id + ``{prefix}_0..n-1`` binary columns in list order (null = padding)."""
    exploded = samples.select("request_id", F.posexplode(ids_col).alias("slot", "item_id"))
    joined = exploded.join(images, "item_id", "left")
    agg = joined.groupBy("request_id").agg(
        F.map_from_entries(F.collect_list(F.struct("slot", "image"))).alias("_m"))
    return agg.select("request_id", *[F.col("_m").getItem(i).alias(f"{prefix}_{i}") for i in range(n)])


def pretrain_training_frame(samples: DataFrame, items: DataFrame, l_pv: int, l_click: int) -> DataFrame:
    """Pre-training samples -> one row per page with padded labels and image slots.

    Columns: request_id, pv_labels (int[l_pv], 0 in padding), pv_img_i, hist_img_i
    (binary or null). Items without a usable image become null slots, i.e.
    padding: they are masked like absent items."""
    images = items.select("item_id", "image")
    pv = _slot_images(samples, images, "pv_item_ids", "pv_img", l_pv)
    hist = _slot_images(samples, images, "hist_item_ids", "hist_img", l_click)
    labels = F.concat(F.slice("pv_labels", 1, l_pv),
                      F.array_repeat(F.lit(0), F.greatest(F.lit(0), F.lit(l_pv) - F.size("pv_labels"))))
    return (samples.select("request_id", labels.alias("pv_labels"))
            .join(pv, "request_id").join(hist, "request_id"))


# parquet-mr (1.15.2 in Spark 4.0) measures a row group's buffered size only
# every N records: first after parquet.page.size.row.check.min (default 100)
# records, then adaptively, at most parquet.page.size.row.check.max (default
# 10000) ahead; the same keys also pace the page-size checks. A training-frame
# row carries l_pv + l_click PNG blobs (~100 KB), so 100 rows buffer ~10 MB
# against our 1 MB row groups: every flush then logged "InternalParquetRecordWriter:
# Too much memory used" (allocated > 3x the row-group size; a ~140-line WARN)
# and the row groups came out ~10x the size asked for. Checking from the first
# record on, and at most 16 records ahead, keeps row groups near 1 MB and the
# warning away (measured: 800 rows of 8 blobs of 5-20 KB, 8 warnings and 8
# row groups of 9.4 MB before, 0 warnings and 90 row groups of <= 0.92 MB after).
# The checks are a sum over ~20 column buffers: negligible next to the row.
PARQUET_WRITE_CONF = {
    "parquet.page.size.row.check.min": "1",
    "parquet.page.size.row.check.max": "16",
}


@contextmanager
def _hadoop_conf(spark, conf: dict[str, str]) -> Iterator[None]:
    """Set Hadoop configuration keys for the writes inside, then restore them.
    (Spark copies the SparkContext's Hadoop configuration into every write's.)"""
    hc = spark.sparkContext._jsc.hadoopConfiguration()
    before = {k: hc.get(k) for k in conf}
    for k, v in conf.items():
        hc.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                hc.unset(k)
            else:
                hc.set(k, v)


def decode_batch(pdf: pd.DataFrame, l_pv: int, l_click: int, size: int) -> dict[str, np.ndarray]:
    """A pandas batch of the training frame -> numpy arrays the model takes."""
    pv = [decode_slots([r[f"pv_img_{i}"] for i in range(l_pv)], size) for _, r in pdf.iterrows()]
    hist = [decode_slots([r[f"hist_img_{i}"] for i in range(l_click)], size) for _, r in pdf.iterrows()]
    return {
        "pv_images": np.stack([p[0] for p in pv]), "pv_mask": np.stack([p[1] for p in pv]),
        "hist_images": np.stack([h[0] for h in hist]), "hist_mask": np.stack([h[1] for h in hist]),
        "pv_labels": np.stack([np.asarray(x, dtype=np.int64) for x in pdf["pv_labels"]]),
    }


def _legacy_filesystem(url: str):
    """The project's fsspec filesystem for ``url`` behind pyarrow's legacy
    filesystem API. petastorm 0.13 builds ``ParquetDataset(...,
    validate_schema=False)``, which pyarrow 14 accepts only on the legacy path,
    and it takes that path only for a legacy filesystem; on a remote cache
    (webhdfs, s3, gcs, abfs) it would otherwise hand pyarrow a plain fsspec
    one and fail. pyarrow's own ``DaskFileSystem`` wrapper leaves
    ``isdir``/``isfile`` unimplemented; these two are all it misses."""
    from pyarrow.filesystem import DaskFileSystem

    class _Legacy(DaskFileSystem):
        def isdir(self, path):
            return self.fs.isdir(path)

        def isfile(self, path):
            return self.fs.isfile(path)

    return _Legacy(fs.filesystem(url)[0])


@dataclass
class LoaderSpec:
    l_pv: int
    l_click: int
    image_size: int
    batch_size: int


class SampleLoader:
    """Petastorm-backed loader. ``converter`` is picklable, so it can be sent
    to Horovod / TorchDistributor workers; each worker calls ``batches``."""

    def __init__(self, converter, spec: LoaderSpec) -> None:
        self.converter = converter
        self.spec = spec

    @classmethod
    def from_frame(cls, df: DataFrame, spec: LoaderSpec, cache_dir: str,
                   num_shards: int = 1) -> "SampleLoader":
        from petastorm.spark import SparkDatasetConverter, make_spark_converter
        from petastorm.spark.spark_dataset_converter import register_delete_dir_handler
        # petastorm's own handler opens the store with no options (on WebHDFS:
        # as the anonymous user, who may not delete); ours is the project's layer.
        register_delete_dir_handler(lambda url: fs.rm(url, recursive=True))
        df.sparkSession.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF,
                                 cache_dir if "://" in cache_dir else "file://" + cache_dir)
        # Petastorm shards by parquet row group: every worker needs several,
        # so write a few files with small row groups.
        df = df.repartition(max(4, 4 * num_shards))
        with _hadoop_conf(df.sparkSession, PARQUET_WRITE_CONF):
            converter = make_spark_converter(df, parquet_row_group_size_bytes=1 << 20)
        return cls(converter, spec)

    def __len__(self) -> int:
        return len(self.converter)

    def _transform_spec(self):
        from petastorm import TransformSpec
        s = self.spec

        def transform(pdf: pd.DataFrame) -> pd.DataFrame:
            arrays = decode_batch(pdf, s.l_pv, s.l_click, s.image_size)
            out = pd.DataFrame({"pv_labels": list(arrays["pv_labels"])})
            for k in ("pv_images", "pv_mask", "hist_images", "hist_mask"):
                out[k] = list(arrays[k].astype(np.uint8) if k.endswith("mask") else arrays[k])
            return out

        img = (3, s.image_size, s.image_size)
        return TransformSpec(transform, edit_fields=[
            ("pv_labels", np.int64, (s.l_pv,), False),
            ("pv_images", np.float32, (s.l_pv, *img), False),
            ("pv_mask", np.uint8, (s.l_pv,), False),
            ("hist_images", np.float32, (s.l_click, *img), False),
            ("hist_mask", np.uint8, (s.l_click,), False),
        ], selected_fields=["pv_labels", "pv_images", "pv_mask", "hist_images", "hist_mask"])

    def _reader_options(self) -> dict:
        url = self.converter.cache_dir_url
        if fs.is_local(url) or fs.to_fsspec(url)[0] == "hdfs":
            return {}   # petastorm's own local / libhdfs paths
        return {"filesystem": _legacy_filesystem(url)}

    def batches(self, shard: int = 0, num_shards: int = 1, num_epochs: int | None = None,
                workers: int = 2, seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Full batches only (every worker must see equal shapes for the
        global-negative gather); infinite when ``num_epochs`` is None."""
        bs = self.spec.batch_size
        with self.converter.make_torch_dataloader(
                batch_size=bs, num_epochs=num_epochs, cur_shard=shard, shard_count=num_shards,
                workers_count=workers, transform_spec=self._transform_spec(),
                shuffling_queue_capacity=4 * bs, seed=seed,
                **self._reader_options()) as dl:
            for b in dl:
                if b["pv_labels"].shape[0] != bs:
                    continue
                b["pv_mask"] = b["pv_mask"].bool()
                b["hist_mask"] = b["hist_mask"].bool()
                yield b

    def delete(self) -> None:
        self.converter.delete()
