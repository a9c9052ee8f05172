"""courier-spark: COURIER image features on Spark + Delta.

The public API for feature consumers is ``FeatureStore`` (``courier_spark.store``)
and, for serving processes, ``OnlineClient``/``RedisSettings``
(``courier_spark.online_client``, Redis only). They are loaded on first
access, so ``import courier_spark`` stays light: no pyspark, torch or numpy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .online_client import OnlineClient, RedisSettings
    from .store import FeatureStore

__all__ = ["FeatureStore", "OnlineClient", "RedisSettings"]

# Public name -> the module that defines it (imported on first access: PEP 562).
_LAZY = {"FeatureStore": "store", "OnlineClient": "online_client", "RedisSettings": "online_client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value   # later accesses skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
