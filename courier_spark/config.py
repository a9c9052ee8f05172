"""One typed configuration object, built from YAML files in ``conf/`` plus
``--set key=value`` overrides from the command line.

Precedence (later wins): dataclass defaults < ``conf/local.yaml`` (or the
``--config`` file, which may ``extends:`` another file) < ``--set`` overrides.
Unknown keys are errors: a typo must never be silently ignored.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, get_type_hints

import yaml

from .synthetic.marketplace import MarketplaceParams

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULT_CONFIG = CONF_DIR / "local.yaml"


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


@dataclass
class SparkConfig:
    master: str = "local[2]"          # ignored when launched by spark-submit with a master
    app_name: str = "courier-spark"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    delta_package: str = "io.delta:delta-spark_2.13:4.0.0"
    # Jars to use instead of resolving delta_package from Maven Central
    # (for machines without Maven Central access); comma-separated paths.
    jars: str = ""
    log_level: str = "WARN"
    extra: dict = field(default_factory=dict)  # any other spark.* setting


# The synthetic marketplace's parameters are its own dataclass (one
# definition of the knobs, used by the generator and the config alike).
SyntheticConfig = MarketplaceParams


@dataclass
class ValidateConfig:
    # Events more than this far after the wall clock are quarantined as
    # "future_timestamp" (clock skew or a broken producer).
    max_future_skew_hours: float = 24.0
    check_images: bool = True


@dataclass
class WindowsConfig:
    """Pre-training / CTR-train / CTR-test windows.

    ``mode: relative`` derives them from the data's own day span: the last
    ``test_days`` are the test split, the ``ctr_train_days`` before them are
    CTR training, and everything earlier (at most ``pretrain_days`` if set) is
    pre-training. ``mode: absolute`` uses the ISO dates below
    (start inclusive, end exclusive, UTC).
    """
    mode: str = "relative"
    test_days: int = 1
    ctr_train_days: int = 2
    pretrain_days: int | None = None
    pretrain_start: str | None = None
    pretrain_end: str | None = None
    ctr_train_start: str | None = None
    ctr_train_end: str | None = None
    test_start: str | None = None
    test_end: str | None = None


@dataclass
class SamplesConfig:
    session_gap_minutes: float = 30.0
    l_pv: int = 5
    l_click: int = 5
    ctr_history_len: int = 50
    # Share of unclicked impressions kept in pre-training pages (paper: 0.2).
    # Deterministic per event_id, so re-runs keep the same rows.
    negative_keep_rate: float = 0.2
    seed: int = 13


@dataclass
class CourierConfig:
    spark: SparkConfig = field(default_factory=SparkConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    windows: WindowsConfig = field(default_factory=WindowsConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    # Free-form sections later stages own (kept typed per stage module).
    train: dict = field(default_factory=dict)
    embed: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config 'extends' cycle at {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = data.pop("extends", None)
    if parent:
        ppath = (path.parent / parent) if not os.path.isabs(parent) else Path(parent)
        data = _merge(_read_yaml(ppath, seen + (path.resolve(),)), data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value parsed as YAML scalar)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw.strip() != "" else ""


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Coerce YAML values to the declared field type with a clear error."""
    if value is None:
        return None
    origin = getattr(typ, "__origin__", None)
    args = getattr(typ, "__args__", ())
    if origin is not None and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if typ is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {getattr(typ, '__name__', typ)}, got {value!r}") from None
    return value


def _build(cls: type, data: Mapping, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s} (valid keys under "
            f"{prefix.rstrip('.') or 'top level'}: {', '.join(sorted(names))})")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        typ = hints[f.name]
        v = data[f.name]
        if is_dataclass(typ):
            if not isinstance(v, Mapping):
                raise ConfigError(f"{prefix}{f.name}: expected a mapping, got {v!r}")
            kwargs[f.name] = _build(typ, v, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(v, typ, f"{prefix}{f.name}")
    return cls(**kwargs)


def load_config(config_file: str | Path | None = None,
                overrides: Iterable[str] = ()) -> CourierConfig:
    """Build the config: defaults < YAML file (default conf/local.yaml) < overrides."""
    path = Path(config_file) if config_file else DEFAULT_CONFIG
    data = _read_yaml(path) if (config_file or path.exists()) else {}
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    return _build(CourierConfig, data, "")


def section(cfg: CourierConfig, name: str, cls: type) -> Any:
    """Typed view of a free-form stage section (train/embed/...), validated."""
    return _build(cls, getattr(cfg, name) or {}, f"{name}.")


def with_section_values(cfg: CourierConfig, **sections: Mapping[str, Any]) -> CourierConfig:
    """A copy of ``cfg`` with keys of free-form sections replaced, e.g.
    ``with_section_values(cfg, train={"method": "simclr"})`` (the original is untouched)."""
    changes = {}
    for name, values in sections.items():
        current = getattr(cfg, name)
        if not isinstance(current, dict):
            raise ConfigError(f"with_section_values: {name!r} is not a free-form section")
        changes[name] = {**current, **values}
    return dataclasses.replace(cfg, **changes)
