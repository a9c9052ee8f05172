"""Silence Python warnings from third-party code we cannot fix.

``silence_third_party_warnings()`` installs ``warnings`` filters in this
process and appends the same filters to ``PYTHONWARNINGS``, so processes
started afterwards (the Spark JVM's Python workers, Horovod ranks, their
children) inherit them. Call it before the SparkSession starts
(``courier_spark.core.spark.get_spark`` does) and at the top of any function that
runs in a worker process. Idempotent. Standard library only: it runs before
anything heavy is imported.

``PYTHONWARNINGS`` cannot say "this package": its module field must equal the
full module name (``warnings._setoption`` escapes it and anchors it with
``\\Z``) and its message field is a literal, case-insensitive prefix. So the
environment gets one entry per module of each package (found on disk
without importing it, plus the modules seen warning in case the package is
not importable from here); in-process filters use a module regex instead.
"""
from __future__ import annotations

import importlib.util
import os
import re
import warnings
from pathlib import Path

ENV = "PYTHONWARNINGS"

# (package, warning categories, why we cannot fix them). Only builtin
# categories: PYTHONWARNINGS imports a non-builtin category's module at every
# interpreter start.
PACKAGE_RULES: tuple[tuple[str, tuple[type[Warning], ...], str], ...] = (
    # petastorm 0.13.1 (the last release; unmaintained upstream) calls
    # pyarrow's legacy APIs - pyarrow.localfs / pyarrow.LocalFileSystem,
    # ParquetDataset(use_legacy_dataset=True, metadata_nthreads=...) and its
    # .pieces/.partitions/.fs/.metadata/.common_metadata attributes,
    # ParquetDatasetPiece - which pyarrow 14 (our pin) still supports but
    # flags with a FutureWarning at every reader and every Horovod rank; and
    # it imports distutils' LooseVersion (DeprecationWarning). The fix is
    # petastorm's code; the loader is behind training.loader.SampleLoader so
    # it can be replaced instead.
    ("petastorm", (FutureWarning, DeprecationWarning),
     "petastorm 0.13.1 uses pyarrow's legacy filesystem/ParquetDataset APIs and distutils"),
)

# Modules seen warning (measured with petastorm 0.13.1 + pyarrow 14.0.2): in
# the environment entries even when the package's files cannot be listed.
KNOWN_MODULES: dict[str, tuple[str, ...]] = {
    "petastorm": ("petastorm.fs_utils", "petastorm.reader", "petastorm.unischema",
                  "petastorm.arrow_reader_worker", "petastorm.py_dict_reader_worker",
                  "petastorm.etl.dataset_metadata", "petastorm.spark.spark_dataset_converter",
                  "petastorm.pytorch", "petastorm.hdfs.namenode"),
}


def package_modules(package: str) -> list[str]:
    """Full names of the modules of installed ``package``, found on disk
    without importing it (tests excluded); [] when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    names = set(KNOWN_MODULES.get(package, ()))
    names.add(package)
    for root in (spec.submodule_search_locations or []) if spec else []:
        base = Path(root)
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            if any(p in ("tests", "test") or p.startswith("test_") for p in rel.parts):
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if all(p.isidentifier() for p in parts):
                names.add(".".join((package, *parts)))
    return sorted(names)


def env_entries() -> list[str]:
    """The ``PYTHONWARNINGS`` entries ``silence_third_party_warnings`` adds."""
    return [f"ignore::{cat.__name__}:{mod}"
            for package, cats, _why in PACKAGE_RULES
            for mod in package_modules(package)
            for cat in cats]


def silence_third_party_warnings() -> None:
    """Ignore the warnings of ``PACKAGE_RULES`` here and in child processes."""
    for package, cats, _why in PACKAGE_RULES:
        for cat in cats:
            # In-process the module field is a regex matched at the start.
            warnings.filterwarnings("ignore", category=cat, module=rf"{re.escape(package)}(\.|$)")
    ours = env_entries()
    have = [e for e in os.environ.get(ENV, "").split(",") if e.strip()]
    # Entries later in PYTHONWARNINGS take precedence: ours go last.
    os.environ[ENV] = ",".join([e for e in have if e not in ours] + ours)
