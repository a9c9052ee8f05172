"""Versioned model artifacts.

Layout: ``<root>/models/<method>/<version>/`` with
* ``encoder.pt``    the image encoder's state dict (what embedding needs),
* ``model.pt``      the full training model's state dict (encoder + attention),
* ``artifact.json`` method, backbone, embed_dim, image_size, the config that
                    made it, the data version (Delta table versions read) and metrics.
Versions are ``v0001``, ``v0002``, ...; ``latest`` resolves to the highest.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .backbones import build_backbone

_VERSION = re.compile(r"^v(\d{4,})$")


class ArtifactNotFoundError(FileNotFoundError):
    """The requested model version does not exist (message lists what does)."""


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

    def load_encoder(self, map_location: str = "cpu") -> nn.Module:
        enc = build_backbone(self.backbone, self.embed_dim,
                             projection_head=bool(self.config.get("projection_head", False)))
        enc.load_state_dict(torch.load(os.path.join(self.path, "encoder.pt"),
                                       map_location=map_location, weights_only=True))
        return enc.eval()


def list_versions(models_dir: str, method: str) -> list[str]:
    d = os.path.join(models_dir, method)
    if not os.path.isdir(d):
        return []
    return sorted((v for v in os.listdir(d)
                   if _VERSION.match(v) and os.path.exists(os.path.join(d, v, "artifact.json"))),
                  key=lambda v: int(v[1:]))


def next_version(models_dir: str, method: str) -> str:
    have = list_versions(models_dir, method)
    return f"v{(int(have[-1][1:]) + 1 if have else 1):04d}"


def save_artifact(models_dir: str, method: str, encoder: nn.Module, full_model: nn.Module | None,
                  *, backbone: str, embed_dim: int, image_size: int, config: dict,
                  data_versions: dict, metrics: dict, version: str | None = None) -> ModelArtifact:
    version = version or next_version(models_dir, method)
    path = os.path.join(models_dir, method, version)
    tmp = path + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    torch.save(encoder.state_dict(), os.path.join(tmp, "encoder.pt"))
    if full_model is not None:
        torch.save(full_model.state_dict(), os.path.join(tmp, "model.pt"))
    art = ModelArtifact(method, version, path, backbone, embed_dim, image_size,
                        config, data_versions, metrics)
    meta = {k: v for k, v in art.__dict__.items() if k != "path"}
    with open(os.path.join(tmp, "artifact.json"), "w") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True, default=str)
    # Rename last: a reader never sees a half-written version.
    if os.path.exists(path):
        import shutil
        shutil.rmtree(path)
    os.replace(tmp, path)
    return art


def load_artifact(models_dir: str, method: str, version: str = "latest") -> ModelArtifact:
    """The artifact of ``method`` at ``version`` (``latest`` = highest); a version
    that does not exist is an ``ArtifactNotFoundError`` listing the ones that do."""
    have = list_versions(models_dir, method)
    if version == "latest":
        if not have:
            raise ArtifactNotFoundError(
                f"no trained model for method {method!r} under {models_dir}; run `courier train` first")
        version = have[-1]
    if not _VERSION.match(str(version)):
        raise ArtifactNotFoundError(
            f"model version {version!r} of {method!r} is not a version name: use 'latest' or vNNNN "
            f"(available: {', '.join(have) or 'none'})")
    if version not in have:
        raise ArtifactNotFoundError(
            f"model {method}/{version} does not exist under {models_dir}; "
            f"available: {', '.join(have) or 'none'}")
    path = os.path.join(models_dir, method, version)
    with open(os.path.join(path, "artifact.json")) as fh:
        meta: dict[str, Any] = json.load(fh)
    meta["path"] = path
    return ModelArtifact(**meta)
