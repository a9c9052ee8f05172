"""Embedding job: every item image -> an L2-normalised embedding of one model version.

How the model reaches the workers: the encoder's state dict (``encoder.pt``
bytes) is broadcast once per job (``sc.broadcast``), so each executor fetches
it once, whatever the number of tasks, and it works on a cluster whose workers
cannot see the driver's local ``models/`` directory. Each Python worker builds
the encoder once and keeps it in a module global keyed by the broadcast id
(PySpark reuses Python workers across tasks), then runs batched forwards over
``mapInPandas`` batches: no per-row model calls.

Items whose image is missing or undecodable get no embedding row; the stage
(``visual_stages.run_embed``) counts them from the written table, by reason.
"""
from __future__ import annotations

import functools
import io
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from courier_spark.core import fs
from courier_spark.core.errors import MissingArtifactError, VersionNotFoundError

EMBEDDINGS_SCHEMA = T.StructType([
    T.StructField("item_id", T.LongType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("embedding", T.ArrayType(T.FloatType(), False), False),
])


@dataclass(frozen=True)
class _EncoderSpec:
    """What a worker needs besides the weights (small; pickled with the task)."""
    backbone: str
    embed_dim: int
    image_size: int
    projection_head: bool
    model_version: str
    batch_size: int
    torch_threads: int
    device: str


# Per-Python-worker cache: broadcast key -> (encoder, torch device).
_ENCODERS: dict[str, Any] = {}


def _worker_encoder(key: str, spec: _EncoderSpec, weights_bc) -> tuple[Any, Any]:
    import torch

    if key not in _ENCODERS:
        from training.backbones import build_backbone

        torch.set_num_threads(spec.torch_threads)
        dev = "cuda" if spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available()) else "cpu"
        # Same construction as ModelArtifact.load_encoder, from broadcast bytes.
        enc = build_backbone(spec.backbone, spec.embed_dim, projection_head=spec.projection_head)
        enc.load_state_dict(torch.load(io.BytesIO(weights_bc.value), map_location="cpu", weights_only=True))
        _ENCODERS.clear()  # one model per worker at a time: an old version's weights are garbage now
        _ENCODERS[key] = (enc.eval().to(dev), torch.device(dev))
    return _ENCODERS[key]


def _embed_batches(batches: Iterator[pd.DataFrame], key: str, spec: _EncoderSpec, weights_bc
                   ) -> Iterator[pd.DataFrame]:
    """mapInPandas body: (item_id, image) batches -> (item_id, model_version, embedding)."""
    import torch

    from training.images import decode_image

    enc, dev = _worker_encoder(key, spec, weights_bc)
    for pdf in batches:
        for lo in range(0, len(pdf), spec.batch_size):
            chunk = pdf.iloc[lo:lo + spec.batch_size]
            ids, arrs = [], []
            for item_id, data in zip(chunk["item_id"].to_numpy(), chunk["image"]):
                arr = decode_image(data, spec.image_size)
                if arr is not None:  # undecodable: no row; counted by the stage
                    ids.append(int(item_id))
                    arrs.append(arr)
            if not ids:
                continue
            with torch.inference_mode():
                out = enc(torch.from_numpy(np.stack(arrs)).to(dev))
                out = torch.nn.functional.normalize(out.float(), dim=1).cpu().numpy()
            yield pd.DataFrame({"item_id": np.asarray(ids, dtype=np.int64),
                                "model_version": spec.model_version,
                                "embedding": list(out.astype(np.float32))})


def embed_items(items_df: DataFrame, artifact, batch_size: int = 64, *,
                torch_threads: int = 1, device: str = "auto", min_partitions: int = 0) -> DataFrame:
    """Items (``item_id``, ``image`` bytes nullable) -> ``item_id, model_version,
    embedding`` (array<float>, L2-normalised) for every decodable image.

    ``artifact`` is a ``training.artifact.ModelArtifact``; images are decoded
    with ``training.images.decode_image(bytes, artifact.image_size)``, exactly as
    in training. Missing/undecodable images produce no row.
    """
    for c in ("item_id", "image"):
        if c not in items_df.columns:
            raise ValueError(f"embed_items: input lacks column {c!r} (has {', '.join(items_df.columns)})")
    if not fs.exists(artifact.encoder_uri):
        raise MissingArtifactError(f"model {artifact.model_version}: no encoder weights at {artifact.encoder_uri}")
    spark: SparkSession = items_df.sparkSession
    weights_bc = spark.sparkContext.broadcast(artifact.encoder_bytes())
    spec = _EncoderSpec(artifact.backbone, int(artifact.embed_dim), int(artifact.image_size),
                        bool((artifact.config or {}).get("projection_head", False)),
                        artifact.model_version, int(batch_size), int(torch_threads), device)
    df = items_df.filter(F.col("image").isNotNull()).select(F.col("item_id").cast("long"), "image")
    want = min_partitions or spark.sparkContext.defaultParallelism
    if df.rdd.getNumPartitions() < want:
        df = df.repartition(want)  # the forward pass dominates: spread it over all cores
    # A module-level function + partial pickles by reference, so the worker's
    # module global (the encoder cache) survives across tasks; the key is
    # unique per broadcast.
    fn = functools.partial(_embed_batches, key=uuid.uuid4().hex, spec=spec, weights_bc=weights_bc)
    return df.mapInPandas(fn, schema=EMBEDDINGS_SCHEMA)


def read_embeddings(spark: SparkSession, path: str, model_version: str) -> DataFrame:
    """gold/item_embeddings rows of one model version (clear error when absent)."""
    from courier_spark.core.tables import read_table

    df = read_table(spark, path)
    out = df.filter(F.col("model_version") == model_version)
    if out.limit(1).count() == 0:
        have = sorted(r[0] for r in df.select("model_version").distinct().collect())
        raise VersionNotFoundError(f"no embeddings of model {model_version!r} in {path}; "
                          f"available: {', '.join(have) or 'none'}; run `courier embed` for it first")
    return out


def embeddings_to_numpy(df: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids int64 [N], vectors float32 [N, d]) collected to the driver."""
    pdf = df.select("item_id", "embedding").toPandas()
    if len(pdf) == 0:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return (pdf["item_id"].to_numpy(np.int64),
            np.ascontiguousarray(np.stack(pdf["embedding"].to_numpy()).astype(np.float32)))


@dataclass
class EmbeddingAccounting:
    """Every input item embedded or listed by reason, from the *written* rows."""

    embedded: int
    not_embedded: dict          # reason -> items
    dim: int | None             # largest embedding length (equal to dim_min when consistent)
    dim_min: int | None
    max_norm_error: float       # max | ||e|| - 1 | (embeddings are unit vectors)

    def balanced(self, items_in: int) -> bool:
        return self.embedded + sum(self.not_embedded.values()) == items_in and self.dim == self.dim_min


def embedding_accounting(items: DataFrame, written: DataFrame) -> EmbeddingAccounting:
    """Account for ``items`` (silver) against one model version's written embeddings, without a second forward pass."""
    status = F.col("image_status") if "image_status" in items.columns else F.lit(None).cast("string")
    reason = (F.when(F.col("image").isNull(), F.coalesce(status, F.lit("missing")))
              .otherwise(F.lit("decode_failed_at_embed")))
    not_embedded = {r["reason"]: int(r["count"]) for r in
                    items.join(written.select("item_id"), "item_id", "left_anti")
                    .groupBy(reason.alias("reason")).count().collect()}
    norm = F.sqrt(F.aggregate("embedding", F.lit(0.0).cast("double"), lambda acc, v: acc + v.cast("double") * v.cast("double")))
    chk = written.agg(F.count("*").alias("n"), F.max(F.size("embedding")).alias("dim"),
                      F.min(F.size("embedding")).alias("dim_min"),
                      F.max(F.abs(norm - 1)).alias("norm_err")).first()
    return EmbeddingAccounting(embedded=int(chk["n"]), not_embedded=not_embedded, dim=chk["dim"],
                               dim_min=chk["dim_min"], max_norm_error=float(chk["norm_err"] or 0.0))
