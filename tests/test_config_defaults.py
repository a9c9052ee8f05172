"""One set of defaults: the schema's, what a command without --config runs on.
The demo config (conf/demo.yaml, passed by scripts/demo.sh) lists only the
keys where the demo world differs, each with its reason."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from courier_spark.core.config import DEMO_CONFIG, load_config
from courier_spark.core.schema import CourierConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def _leaves(node: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _default(key: str) -> object:
    obj = CourierConfig()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def test_demo_config_holds_only_differences_each_with_a_reason():
    text = (CONF / "demo.yaml").read_text()
    listed = _leaves(yaml.safe_load(text))
    assert listed, "conf/demo.yaml lists no keys"
    lines = text.splitlines()
    for key, value in listed.items():
        assert value != _default(key), f"{key}: equals the schema default ({value!r}); drop it from demo.yaml"
        name = key.rsplit(".", 1)[1]
        at = next(i for i, ln in enumerate(lines) if re.match(rf"\s*{re.escape(name)}:", ln))
        comments = []
        i = at - 1
        while i >= 0 and lines[i].strip().startswith("#"):
            comments.insert(0, lines[i].strip())
            i -= 1
        assert comments and comments[0].startswith("# reason:") and len(comments[0]) > len("# reason: ") + 10, \
            f"{key}: needs a '# reason: ...' comment right above it"


def test_loaded_demo_config_is_the_defaults_plus_the_listed_keys():
    listed = _leaves(yaml.safe_load((CONF / "demo.yaml").read_text()))
    cfg, defaults = load_config(DEMO_CONFIG, []), CourierConfig()

    def walk(a, b, prefix=""):
        for name in a.__dataclass_fields__:
            x, y = getattr(a, name), getattr(b, name)
            key = f"{prefix}{name}"
            if hasattr(x, "__dataclass_fields__"):
                walk(x, y, key + ".")
            elif key in listed:
                assert x == listed[key], key
            else:
                assert x == y, f"{key}: {x!r} from demo.yaml but the schema says {y!r}"
    walk(cfg, defaults)


@pytest.mark.parametrize("name", ["cluster.yaml", "large.yaml", "world_v1.yaml"])
def test_other_configs_load(name):
    cfg = load_config(CONF / name, [])
    assert cfg.train.steps == CourierConfig().train.steps


def test_no_config_is_the_schemas_defaults():
    """A user's own data: no demo setting applies (the demo's categories would
    not be categories of it)."""
    assert load_config(None, []) == CourierConfig()
    assert load_config(CONF / "cluster.yaml", []).train.categories == []
    for preset in ("large.yaml", "world_v1.yaml"):     # synthetic worlds: the demo's categories
        assert load_config(CONF / preset, []).train.categories == load_config(DEMO_CONFIG, []).train.categories
