"""The read side of the online store, for serving processes: the key layout,
the field encoding and ``lookup``. Needs only the ``redis`` package and the
standard library (``pip install courier-spark[serving]`` is enough; no
pyspark, torch or numpy is imported), so a request path can read what
``courier online`` wrote without the platform.

Layout: one Redis hash per item, ``<prefix>item_visual:<item_id>``, with the
feature values and their versions (``VALUE_FIELDS``); a missing value is a
missing field, never an empty string. The hash ``<prefix>item_visual:_meta``
records which table and which Delta version the store holds. The writer
(``courier_spark.serving.online``, Spark) uses ``encode`` and the keys from here, so
the layout lives in one place.

The password is read from the environment variable named by
``password_env``; it is never part of an error message or of ``repr`` of the
settings.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from courier_spark.core.errors import OnlineStoreError

if TYPE_CHECKING:  # typing only: the schema module is not needed to serve
    import redis

    from courier_spark.core.schema import OnlineConfig

VALID_FROM = "valid_from"   # the same name as feature_store.VALID_FROM (asserted in tests/test_serving_client.py)
# The values one item's hash holds, in this order; lookup returns exactly these keys.
VALUE_FIELDS = ("courier_cluster_id", "distance", "model_version", "centroid_version", "item_updated_at", VALID_FROM)
_INT, _FLOAT, _TS = ("courier_cluster_id",), ("distance",), ("item_updated_at", VALID_FROM)

FeatureValues = dict[str, Any]


@dataclass(frozen=True)
class RedisSettings:
    """Where the online store is and how its keys are named (the ``online`` config section)."""
    host: str
    port: int
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    password_env: str = ""
    key_prefix: str = "courier:"
    timeout_seconds: float = 5.0

    @classmethod
    def from_config(cls, cfg: "OnlineConfig | Mapping[str, Any]") -> "RedisSettings":
        """From the ``online`` section (the typed section, or its dict as a run
        summary records it); the password from ``$<password_env>``."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
        password_env = str(get("password_env", "COURIER_REDIS_PASSWORD"))
        return cls(str(get("host", "127.0.0.1")), int(get("port", 6379)), int(get("db", 0)),
                   str(get("username", "") or ""), os.environ.get(password_env, ""), password_env,
                   str(get("key_prefix", "courier:")), float(get("timeout_seconds", 5.0)))

    def describe(self) -> str:
        """Where the store is, for messages (the password never appears)."""
        return f"redis://{self.username + '@' if self.username else ''}{self.host}:{self.port}/{self.db}"

    def item_key(self, item_id: int) -> str:
        return f"{self.key_prefix}item_visual:{int(item_id)}"

    @property
    def meta_key(self) -> str:
        return f"{self.key_prefix}item_visual:_meta"


def connect(settings: RedisSettings) -> "redis.Redis":
    """A checked client (PING answered) or an ``OnlineStoreError`` saying why not."""
    import redis

    client = redis.Redis(host=settings.host, port=settings.port, db=settings.db,
                         username=settings.username or None, password=settings.password or None,
                         socket_timeout=settings.timeout_seconds, socket_connect_timeout=settings.timeout_seconds,
                         decode_responses=True)
    where = settings.describe()
    pw = (f"the password in ${settings.password_env}" if settings.password
          else f"no password (${settings.password_env} is not set)")
    try:
        client.ping()
    except redis.exceptions.AuthenticationError:
        raise OnlineStoreError(f"online store {where}: authentication failed with {pw}") from None
    except redis.exceptions.ResponseError as e:
        if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
            raise OnlineStoreError(f"online store {where}: authentication failed with {pw}") from None
        raise OnlineStoreError(f"online store {where}: {e}") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
        raise OnlineStoreError(f"online store {where} cannot be reached: {type(e).__name__}: "
                               f"{str(e).replace(settings.password or chr(0), '***')[:200]}") from None
    return client


def encode(row: Mapping[str, Any]) -> dict[str, str]:
    """A feature row -> Redis hash fields (strings; None -> no field). Floats
    are written with ``repr`` of the float32 value, which reads back exactly."""
    out = {}
    for f in VALUE_FIELDS:
        v = row.get(f)
        if v is None:
            continue
        if f in _INT:
            out[f] = str(int(v))
        elif f in _FLOAT:
            out[f] = repr(float(v))
        elif f in _TS:
            out[f] = v.isoformat(sep=" ")
        else:
            out[f] = str(v)
    return out


def decode(fields: Mapping[str, str]) -> FeatureValues | None:
    """Redis hash fields -> typed values (the inverse of ``encode``); None for no key."""
    if not fields:
        return None
    out: FeatureValues = {}
    for f in VALUE_FIELDS:
        v = fields.get(f)
        if v is None:
            out[f] = None
        elif f in _INT:
            out[f] = int(v)
        elif f in _FLOAT:
            out[f] = float(v)
        elif f in _TS:
            out[f] = dt.datetime.fromisoformat(v)
        else:
            out[f] = v
    return out


def lookup(client: "redis.Redis", settings: RedisSettings, item_ids: Iterable[int]) -> dict[int, FeatureValues | None]:
    """Serving's read helper: item_id -> its feature values (None when the store has no row).
    One pipelined round trip for all ids."""
    ids = [int(i) for i in item_ids]
    pipe = client.pipeline(transaction=False)
    for i in ids:
        pipe.hgetall(settings.item_key(i))
    return {i: decode(h) for i, h in zip(ids, pipe.execute())}


class OnlineClient:
    """A connection to the online store with its key layout: what a serving
    process holds. ``OnlineClient(RedisSettings(...))`` or
    ``FeatureStore(root).online()``; connects (and checks the password) on
    first use."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._client: "redis.Redis | None" = None

    def __repr__(self) -> str:
        return f"OnlineClient({self.settings.describe()}, prefix={self.settings.key_prefix!r})"

    @property
    def client(self) -> "redis.Redis":
        """The checked ``redis.Redis`` connection."""
        if self._client is None:
            self._client = connect(self.settings)
        return self._client

    def lookup(self, item_ids: Iterable[int]) -> dict[int, FeatureValues | None]:
        """item_id -> its current feature values (``VALUE_FIELDS``), None for an item the store lacks."""
        return lookup(self.client, self.settings, item_ids)

    def get(self, item_id: int) -> FeatureValues | None:
        """One item's current feature values, or None."""
        return self.lookup([item_id])[int(item_id)]

    def loaded_version(self) -> dict[str, str]:
        """What the store holds: the feature table and its Delta version (``{}`` if never loaded)."""
        return dict(self.client.hgetall(self.settings.meta_key))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
