"""courier-spark: COURIER image features on Spark + Delta.

The public API for feature consumers is ``FeatureStore`` (``courier_spark.serving.store``)
and, for serving processes, ``OnlineClient``/``RedisSettings``
(``courier_spark.serving.client``, Redis only). They are loaded on first
access, so ``import courier_spark`` stays light: no pyspark, torch or numpy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from courier_spark.serving.client import OnlineClient, RedisSettings
    from courier_spark.serving.store import FeatureStore

__all__ = ["FeatureStore", "OnlineClient", "RedisSettings"]

# Public name -> the module that defines it (imported on first access: PEP 562).
_LAZY = {"FeatureStore": "serving.store", "OnlineClient": "serving.client", "RedisSettings": "serving.client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value   # later accesses skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
