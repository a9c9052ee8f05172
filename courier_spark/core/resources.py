"""Where the files that ship with the code live: the analyst SQL (``sql/``)
and the configs (``conf/``: ``demo.yaml`` for the demo world, presets, ``log4j2.properties``).

Two layouts, one answer. In a checkout (and an editable install) they are the
top-level ``sql/`` and ``conf/`` folders next to ``courier_spark/``. In a
wheel (``pip install .``, a venv-pack'ed environment on a cluster) the same
folders are installed inside the package as ``courier_spark/_data/sql`` and
``courier_spark/_data/conf`` (the package-dir mapping in pyproject.toml).
Standard library only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

DataKind = Literal["sql", "conf"]
DATA_KINDS: tuple[str, ...] = ("sql", "conf")

_PACKAGE_DIR = Path(__file__).resolve().parents[1]   # courier_spark/


def data_dir(kind: DataKind) -> Path:
    """The folder holding the shipped ``kind`` files (``"sql"`` or ``"conf"``).

    The installed copy wins: it only exists in a wheel install, where the
    checkout folder does not (site-packages has no ``sql/`` next to the
    package). When neither exists (a broken install) the checkout path is
    returned, so the caller's "not found" message names where it looked."""
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}; kinds: {', '.join(DATA_KINDS)}")
    installed = _PACKAGE_DIR / "_data" / kind
    checkout = _PACKAGE_DIR.parent / kind
    return installed if installed.is_dir() else checkout
