"""Versioned model artifacts.

Layout: ``<root>/models/<method>/<version>/`` with
* ``encoder.pt``    the image encoder's state dict (what embedding needs),
* ``model.pt``      the full training model's state dict (encoder + attention),
* ``artifact.json`` method, backbone, embed_dim, image_size, the config that
                    made it, the data version (Delta table versions read) and metrics.
Versions are ``v0001``, ``v0002``, ...; ``latest`` resolves to the highest.

``<root>`` is any dataset root ``courier_spark.core.fs`` accepts (local path,
``file:``, ``s3a://``, ``abfss://``, ``gs://``, ``hdfs://``, ``memory://``);
every byte goes through that layer. ``artifact.json`` is written last and is
what makes a version exist: a directory without it (a save that died half way)
is not listed, so readers never see a partial version, and the next save
reuses its number.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from courier_spark.core import fs
from courier_spark.core.errors import CorruptModelError

from .backbones import build_backbone
from .model_versions import META as _META, list_versions, resolve_version


@dataclass
class ModelArtifact:
    method: str
    version: str
    path: str
    backbone: str
    embed_dim: int
    image_size: int
    config: dict = field(default_factory=dict)
    data_versions: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        """Globally readable id written into embeddings and features."""
        return f"{self.method}/{self.version}"

    @property
    def encoder_uri(self) -> str:
        """Where the encoder's state dict lives (any ``courier_spark.core.fs`` URI)."""
        return fs.join(self.path, "encoder.pt")

    def encoder_bytes(self) -> bytes:
        """The serialized encoder state dict, e.g. to broadcast to Spark workers."""
        return fs.read_bytes(self.encoder_uri)

    def load_encoder(self, map_location: str = "cpu") -> nn.Module:
        enc = build_backbone(self.backbone, self.embed_dim,
                             projection_head=bool(self.config.get("projection_head", False)))
        try:
            state = torch.load(io.BytesIO(self.encoder_bytes()), map_location=map_location, weights_only=True)
            enc.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - read back from a shared store: data only, clear error
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CorruptModelError(f"model {self.model_version}: {self.encoder_uri} is not a readable "
                                       f"{self.backbone} state dict (truncated or tampered?): {first}") from None
        return enc.eval()


def next_version(models_dir: str, method: str) -> str:
    have = list_versions(models_dir, method)
    return f"v{(int(have[-1][1:]) + 1 if have else 1):04d}"


def save_artifact(models_dir: str, method: str, encoder: nn.Module, full_model: nn.Module | None,
                  *, backbone: str, embed_dim: int, image_size: int, config: dict,
                  data_versions: dict, metrics: dict, version: str | None = None) -> ModelArtifact:
    """Write a new version (or replace ``version``) of ``method`` under ``models_dir``.

    The weights go first, ``artifact.json`` last: until it lands the version is
    invisible to ``list_versions``/``load_artifact``, on every filesystem
    (object stores cannot rename a directory, so there is no tmp-dir swap).
    """
    version = version or next_version(models_dir, method)
    path = fs.join(models_dir, method, version)
    if fs.exists(path):
        # Replacing a version (or reusing a dead save's directory): hide it
        # first, then clear it so no stale file (an old model.pt) survives.
        fs.rm(fs.join(path, _META))
        fs.rm(path, recursive=True)
    fs.makedirs(path)
    with fs.open_write(fs.join(path, "encoder.pt")) as fh:
        torch.save(encoder.state_dict(), fh)
    if full_model is not None:
        with fs.open_write(fs.join(path, "model.pt")) as fh:
            torch.save(full_model.state_dict(), fh)
    art = ModelArtifact(method, version, path, backbone, embed_dim, image_size,
                        config, data_versions, metrics)
    meta = {k: v for k, v in art.__dict__.items() if k != "path"}
    fs.write_json(fs.join(path, _META), meta)   # last: from here on the version exists
    return art


def copy_as_latest(models_dir: str, art: ModelArtifact, **metrics: Any) -> ModelArtifact:
    """A new (latest) version of ``art.method`` with ``art``'s files and
    description (``metrics`` added), so that ``latest`` names it again."""
    version = next_version(models_dir, art.method)
    path = fs.join(models_dir, art.method, version)
    if fs.exists(path):   # a dead save's directory
        fs.rm(path, recursive=True)
    fs.makedirs(path)
    for name in ("encoder.pt", "model.pt"):
        src = fs.join(art.path, name)
        if fs.exists(src):
            fs.write_bytes(fs.join(path, name), fs.read_bytes(src))
    new = ModelArtifact(art.method, version, path, art.backbone, art.embed_dim, art.image_size,
                        art.config, art.data_versions, {**art.metrics, **metrics})
    fs.write_json(fs.join(path, _META), {k: v for k, v in new.__dict__.items() if k != "path"})  # last
    return new


def load_artifact(models_dir: str, method: str, version: str = "latest") -> ModelArtifact:
    """The artifact of ``method`` at ``version`` (``latest`` = highest); a version
    that does not exist is an ``ArtifactNotFoundError`` listing the ones that do."""
    version = resolve_version(models_dir, method, version)
    path = fs.join(models_dir, method, version)
    meta_uri = fs.join(path, _META)
    try:
        meta: dict[str, Any] = fs.read_json(meta_uri)
        meta["path"] = path
        return ModelArtifact(**meta)
    except (ValueError, TypeError) as exc:  # JSON that does not parse, or not an artefact's fields
        raise CorruptModelError(f"model {method}/{version}: {meta_uri} is not a valid artefact "
                                   f"description ({str(exc)[:200]})") from None
