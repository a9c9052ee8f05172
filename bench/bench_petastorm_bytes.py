"""What the petastorm materialisation of the pre-training data costs in bytes:
how many image copies a frame with an image per slot would hold, and what
the loader writes (an id frame plus each item image once).

    .venv/bin/python bench/bench_petastorm_bytes.py --root DIR [--config conf/large.yaml] [--materialise]

Needs a root after ``samples``. Slot counts come from Spark sums over the
pre-training samples (shown items and history clicks that have an image).
``--materialise`` also writes the loader's cache once, as ``train`` does, and
prints the time and the bytes on disk of the id frame and the images table.
Before the loader stored images once, every slot carried its PNG: measured
with this script then, 32.1 copies per image and 720 MiB on the default data
(8.7 s), 104 copies and 15.9 GB on the large preset (140 s).
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    from courier_spark.core.config import DEMO_CONFIG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--config", default=str(DEMO_CONFIG))
    ap.add_argument("--materialise", action="store_true")
    a = ap.parse_args()

    from pyspark.sql import functions as F

    from courier_spark.core import fs
    from courier_spark.core.config import load_config
    from courier_spark.core.paths import TablePaths
    from courier_spark.core.spark import get_spark
    from courier_spark.core.tables import read_table
    from training.loader import LoaderSpec, SampleLoader, item_images_frame, pretrain_training_frame

    cfg = load_config(a.config, [])
    spark = get_spark(cfg.spark)
    p = TablePaths.for_root(a.root)
    items = read_table(spark, p.silver_items)
    samples = read_table(spark, p.pretrain_samples)
    l_pv, l_click = cfg.samples.l_pv, cfg.samples.l_click
    with_image = item_images_frame(items).select("item_id", F.length("image").alias("n"))
    slots = (samples.select(F.explode(F.concat(F.slice("pv_item_ids", 1, l_pv), F.slice("hist_item_ids", 1, l_click)))
                            .alias("item_id"))
             .join(with_image, "item_id"))
    agg = slots.agg(F.count(F.lit(1)).alias("copies"), F.sum("n").alias("bytes"),
                    F.countDistinct("item_id").alias("items")).first()
    rows = samples.count()
    copies, blob_bytes, n_items = int(agg["copies"]), int(agg["bytes"] or 0), int(agg["items"])
    item_bytes = int(slots.select("item_id", "n").distinct().agg(F.sum("n")).first()[0] or 0)
    print(f"root {a.root}: {rows:,} pre-training rows, {copies:,} image slots filled "
          f"({copies / max(rows, 1):.1f} per row)")
    print(f"distinct item images referenced: {n_items:,}, {item_bytes / 2**20:.1f} MiB "
          f"({item_bytes / max(n_items, 1):,.0f} bytes per image)")
    print(f"an image per slot would be {blob_bytes / 2**20:.1f} MiB = {blob_bytes / max(item_bytes, 1):.1f}x the "
          f"distinct images (each copied {copies / max(n_items, 1):.1f} times on average)")
    if a.materialise:
        frame = pretrain_training_frame(samples, l_pv, l_click)
        t0 = time.perf_counter()
        loader = SampleLoader.from_frame(frame, items, LoaderSpec(l_pv, l_click, cfg.train.image_size, 8),
                                         p.petastorm_cache, cfg.train.num_proc)
        t = time.perf_counter() - t0

        def on_disk(url: str) -> int:
            f, path = fs.filesystem(url)
            return sum(f.size(x) for x in f.find(path))
        ids_b, img_b = on_disk(loader.converter.cache_dir_url), on_disk(loader.images_url)
        print(f"loader materialisation: {t:.1f}s; id frame {ids_b / 2**20:.1f} MiB "
              f"({ids_b / max(rows, 1):.0f} bytes per row), images {img_b / 2**20:.1f} MiB "
              f"({img_b / max(n_items, 1):,.0f} bytes per image, each stored once); "
              f"{(ids_b + img_b) / max(copies, 1):,.0f} bytes per image slot")
        loader.delete()
    spark.stop()


if __name__ == "__main__":
    main()
