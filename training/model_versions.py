"""Which versions of a method's models exist, read from the models folder
alone (no torch): ``training.artifact`` loads them, and the CLI checks a named
version with it before Spark starts (``courier_spark.stages.preflight``)."""
from __future__ import annotations

import re

from courier_spark.core import fs
from courier_spark.core.errors import ArtifactNotFoundError

VERSION = re.compile(r"^v(\d{4,})$")
META = "artifact.json"     # the completion marker: written last


def list_versions(models_dir: str, method: str) -> list[str]:
    """Complete versions of ``method`` (those with ``artifact.json``), oldest first."""
    d = fs.join(models_dir, method)
    if not fs.isdir(d):
        return []
    return sorted((v for v in fs.ls(d) if VERSION.match(v) and fs.exists(fs.join(d, v, META))),
                  key=lambda v: int(v[1:]))


def resolve_version(models_dir: str, method: str, version: str = "latest") -> str:
    """``version`` (``latest`` = the highest) as a complete version of
    ``method``; one that does not exist is an ``ArtifactNotFoundError``
    listing the ones that do."""
    have = list_versions(models_dir, method)
    if version == "latest":
        if not have:
            raise ArtifactNotFoundError(
                f"no trained model for method {method!r} under {models_dir}; run `courier train` first")
        return have[-1]
    if not VERSION.match(str(version)):
        raise ArtifactNotFoundError(
            f"model version {version!r} of {method!r} is not a version name: use 'latest' or vNNNN "
            f"(available: {', '.join(have) or 'none'})")
    if version not in have:
        raise ArtifactNotFoundError(
            f"model {method}/{version} does not exist under {models_dir}; "
            f"available: {', '.join(have) or 'none'}")
    return version
