"""Loading the one typed configuration (schema in ``courier_spark.core.schema``)
from YAML files in ``conf/`` plus ``--set key=value`` overrides.

Precedence (later wins): dataclass defaults < the ``--config`` file (none by
default; it may ``extends:`` another file) < ``--set`` overrides. The demo's
file is ``conf/demo.yaml`` (``DEMO_CONFIG``), passed by ``scripts/demo.sh``.
The whole config is built and checked at once, so a typo in a late stage's
key fails before the first stage runs. Unknown keys are errors naming the
nearest valid key; a wrong type names the expected type. Standard library +
PyYAML only.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, get_type_hints

import yaml

from courier_spark.core.errors import ConfigError
from courier_spark.core.redact import redact_config, remember_secrets, secret_values, user_rule, widen_rule
from courier_spark.core.resources import data_dir
from courier_spark.core.schema import CourierConfig

CONF_DIR = data_dir("conf")   # the checkout's conf/ or the wheel's copy (courier_spark.core.resources)
# The demo world's settings (scripts/demo.sh passes it); a run without --config has none.
DEMO_CONFIG = CONF_DIR / "demo.yaml"


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as
    booleans, which turns `spark.log_level=OFF` into False."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


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
    try:
        data = _yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
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
    if not key or any(not k for k in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = _yaml(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw  # e.g. an unbalanced bracket: kept as text, the field's type check names it
    if isinstance(value, dict) and not raw.strip().startswith("{"):
        value = raw  # `online.key_prefix=courier:` is text, not a one-key YAML mapping
    return key.split("."), value


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", str(typ))


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Coerce YAML values to the declared field type with a clear error."""
    if value is None:
        return None
    origin = getattr(typ, "__origin__", None)
    args = getattr(typ, "__args__", ())
    if type(None) in args:  # X | None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if typ is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if typ is list or origin is list:
        return value  # element types are checked by the schema's `items`
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "on"):
                return True
            if str(value).lower() in ("false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or isinstance(value, (list, dict)) \
                    or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, (bool, list, dict)):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, (list, dict)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: expected {_type_name(typ)}, got {value!r}") from None
    return value


def _unknown_key(prefix: str, key: str, names: Iterable[str]) -> ConfigError:
    names = sorted(names)
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f"; did you mean {prefix}{near[0]}?" if near else ""
    return ConfigError(f"unknown config key {prefix}{key}{hint} (valid keys under "
                       f"{prefix.rstrip('.') or 'top level'}: {', '.join(names)})")


def build_section(cls: type, data: Mapping, prefix: str) -> Any:
    """``cls`` from a mapping: unknown keys and wrong types are ConfigErrors naming the key."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise _unknown_key(prefix, unknown[0], names)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        typ = hints[f.name]
        v = data[f.name]
        if is_dataclass(typ):
            if not isinstance(v, Mapping):
                raise ConfigError(f"{prefix}{f.name}: expected a mapping of keys, got {v!r}")
            kwargs[f.name] = build_section(typ, v, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(v, typ, f"{prefix}{f.name}")
    return cls(**kwargs)


def load_config(config_file: str | Path | None = None,
                overrides: Iterable[str] = ()) -> CourierConfig:
    """Build and check the whole config: the schema's defaults < YAML file (none
    by default) < overrides."""
    data = _read_yaml(Path(config_file)) if config_file else {}
    for item in overrides:
        keys, value = parse_override(item)
        node, section = data, CourierConfig
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            # a value in the schema (not only in the YAML) is not a section either
            typ = get_type_hints(section).get(k) if section is not None else None
            section = typ if typ is not None and is_dataclass(typ) else None
            is_mapping = typ is dict or getattr(typ, "__origin__", None) is dict   # e.g. spark.extra
            if not isinstance(nxt, dict):
                if nxt is not None or (typ is not None and section is None and not is_mapping):
                    raise ConfigError(f"override {item!r}: {'.'.join(keys[:i + 1])} is a value, not a section")
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    # From here on every log line and error of this process masks the secrets
    # this config brings (its values at secret keys, the Redis password from
    # the environment): see courier_spark/core/redact.py. The raw values first, so
    # an error in building the config cannot echo them either.
    rule = user_rule(data)
    if rule:
        try:
            widen_rule(rule)
        except re.error as exc:
            raise ConfigError(f"spark.extra.spark.redaction.regex: not a regular expression ({exc})") from None
    remember_secrets(secret_values(data))
    cfg = build_section(CourierConfig, data, "")
    remember_secrets(secret_values(cfg.to_dict()))
    return cfg


def redacted_dict(cfg: CourierConfig) -> dict:
    """The config as a dict for dumps (run summaries, logs): secrets replaced by
    Spark's ``*********(redacted)``. The running job keeps using ``cfg`` itself."""
    return redact_config(cfg.to_dict())


def with_section_values(cfg: CourierConfig, **sections: Mapping[str, Any]) -> CourierConfig:
    """A checked copy of ``cfg`` with some keys of some sections replaced, e.g.
    ``with_section_values(cfg, train={"method": "simclr"})`` (the original is untouched)."""
    changes = {}
    for name, values in sections.items():
        current = getattr(cfg, name, None)
        if not is_dataclass(current):
            raise ConfigError(f"with_section_values: {name!r} is not a config section")
        unknown = set(values) - {f.name for f in fields(current)}
        if unknown:
            raise _unknown_key(f"{name}.", sorted(unknown)[0], [f.name for f in fields(current)])
        changes[name] = dataclasses.replace(current, **values)
    return dataclasses.replace(cfg, **changes)
