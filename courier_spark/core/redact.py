"""Secrets never at rest: the one redaction rule for config dumps, run
summaries, log lines (console and file) and the CLI's error lines.

The rule is Spark's own. PySpark 4.0.1's ``spark-core`` jar defines
``spark.redaction.regex`` (``org.apache.spark.internal.config.package``,
``SECRET_REDACTION_PATTERN``) with the default
``(?i)secret|password|token|access[.]?key`` and replaces a matching entry's
value with ``*********(redacted)`` (``Utils.REDACTION_REPLACEMENT_TEXT``);
an entry is redacted when the regex is found in its key *or* its value.

Three ways a secret is recognised:

* by its key: a config value whose dotted path (``spark.extra.spark.hadoop.
  fs.s3a.secret.key``, however it was nested) matches the rule;
* by its value: every value found at such a key when the config was loaded,
  every environment variable named by a ``*_env`` key of the config (the
  Redis password) and every environment variable whose own name matches the
  rule (``AWS_SECRET_ACCESS_KEY``) is remembered, and ``mask_text`` replaces
  it wherever it shows up, e.g. inside a Hadoop exception's text;
* by its shape in text: the password of a URI (``redis://u:PW@host``) and the
  value of a ``key=value`` / ``key: value`` pair whose key matches the rule.

Standard library only (infrastructure layer).
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any, Iterable, Mapping

# Spark's default `spark.redaction.regex` (PySpark 4.0.1, see above): keep in step.
SPARK_REDACTION_REGEX = r"(?i)secret|password|token|access[.]?key"
REDACTED = "*********(redacted)"   # Spark's replacement text

_DEFAULT_RULE = re.compile(SPARK_REDACTION_REGEX)
_rules: list[re.Pattern[str]] = [_DEFAULT_RULE]
# A user's own `spark.redaction.regex` (in spark.extra) widens the rule, as it
# does Spark's; it never narrows it (see `widen_rule`).
USER_RULE_KEY = "spark.extra.spark.redaction.regex"

# Fields of our own schema whose names match the rule but hold no secret (token
# counts of the CTR text model). Anything else that matches is redacted; a
# test keeps this list honest (each entry must still be a field of the schema).
NOT_SECRET_FIELDS = frozenset({"evaluate.dnn.token_buckets", "evaluate.dnn.max_title_tokens"})

# Values shorter than this, or these words, are too common to mask inside
# arbitrary text (masking "1" or "true" everywhere would make the logs
# unreadable); such a value is still redacted where its key shows it.
_MIN_MASKED_LENGTH = 4
_NOT_MASKED_VALUES = frozenset({"true", "false", "none", "null"})

# `scheme://user:PASSWORD@`. The password may hold a raw '/' (AWS secret keys
# do, and people paste them unescaped), so `hdfs://nn:8020/a@b` is masked too:
# a lost port is cheaper than a leaked key.
# Every run is matched once, possessively, from its start (3.11's `*+`), so a
# long line costs linear time, never a backtracking blow-up.
_URI_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<head>[A-Za-z][A-Za-z0-9+.\-]{0,30}+://[^\s:/@]{0,200}+:)"
                           r"(?P<pw>[^\s@]{1,500}+)(?P<at>@)")
# `some.secret.key=VALUE`, `"password": "VALUE"`, `token: VALUE` in free text:
# every `key<sep>` is found (the value is not consumed, so a pair inside
# another's value, `opts=-Dx.password=y`, is found too); only a secret key's
# value is then read, up to the next space, quote or separator.
_KEY_SEP = re.compile(r"(?<![\w.\-])(?P<key>[\w.\-]{1,200}+)(?P<sep>\"?'?[ \t]*(?:=|:(?!//))[ \t]*[\"']?)")
_VALUE = re.compile(r"[^\s\"',;&)}\]]{1,4096}+")

_lock = threading.Lock()
_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None


def widen_rule(regex: str) -> None:
    """Also treat keys matching ``regex`` (a user's ``spark.redaction.regex``,
    Java syntax, which Python reads the same for the usual patterns) as
    secrets, e.g. Azure's ``fs.azure.account.key.<account>``, which Spark's
    default misses. Raises ``re.error`` for a pattern Python cannot read."""
    extra = re.compile(regex)
    with _lock:
        if extra not in _rules:
            _rules.append(extra)


def _matches_rule(text: str) -> bool:
    return any(rule.search(text) for rule in _rules)


def user_rule(tree: Mapping) -> str | None:
    """The ``spark.redaction.regex`` a config (nested dict) sets in ``spark.extra``, if any."""
    for path, v in _leaves(tree):
        if path == USER_RULE_KEY and isinstance(v, str) and v:
            return v
    return None


def _is_name_of_env_var(path: str) -> bool:
    """``online.password_env`` holds the NAME of a variable, not a secret: the
    name stays readable, the variable's value is remembered as a secret."""
    return path.rsplit(".", 1)[-1].endswith("_env")


def _exempt(path: str) -> bool:
    return _is_name_of_env_var(path) or any(path == f or path.endswith("." + f) for f in NOT_SECRET_FIELDS)


def is_secret_key(path: str) -> bool:
    """Whether the value at dotted ``path`` is a secret by Spark's rule."""
    return bool(_matches_rule(path)) and not _exempt(path)


def _leaves(tree: Mapping, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _leaves(v, path + ".")
        else:
            yield path, v


def secret_values(tree: Mapping, environ: Mapping[str, str] | None = None) -> set[str]:
    """The literal secrets a config (as a nested dict) brings: its values at
    secret keys, the variables its ``*_env`` keys name, and every environment
    variable whose name matches the rule (``_`` read as ``.``: AWS_ACCESS_KEY_ID)."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for path, v in _leaves(tree):
        if _is_name_of_env_var(path) and isinstance(v, str) and _matches_rule(path):
            found.add(environ.get(v, ""))
        elif is_secret_key(path) and v is not None and not isinstance(v, bool):
            found.add(str(v))
    found.update(v for name, v in environ.items() if _matches_rule(name.replace("_", ".")))
    return {v for v in found if len(v) >= _MIN_MASKED_LENGTH and v.lower() not in _NOT_MASKED_VALUES}


def remember_secrets(values: Iterable[str]) -> None:
    """Mask these literal values in every text from now on (this process)."""
    global _known_pattern
    with _lock:
        new = {v for v in values if v and len(v) >= _MIN_MASKED_LENGTH}
        if new - _known:
            _known.update(new)
            # Longest first, so a secret that contains another is masked whole.
            _known_pattern = re.compile("|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True)))


def forget_secrets() -> None:
    """Tests only: start again with no remembered values and Spark's default rule."""
    global _known_pattern
    with _lock:
        _known.clear()
        _known_pattern = None
        _rules[:] = [_DEFAULT_RULE]


# In free text a key may be a field's last part only (`token_buckets=4096`).
_NOT_SECRET_NAMES = frozenset(f.rsplit(".", 1)[-1] for f in NOT_SECRET_FIELDS)


def _is_secret_text_key(key: str) -> bool:
    return _matches_rule(key) and not _is_name_of_env_var(key) and key.rsplit(".", 1)[-1] not in _NOT_SECRET_NAMES


def _mask_pairs(text: str) -> str:
    """The value of every ``secret-key=value`` pair in ``text`` masked."""
    out: list[str] = []
    pos = 0
    for m in _KEY_SEP.finditer(text):
        if m.end() < pos or not _is_secret_text_key(m.group("key")):
            continue   # inside a value masked already, or no secret
        value = _VALUE.match(text, m.end())
        if value is None or value.group().startswith(REDACTED[:9]):   # empty, or masked already
            continue
        out += [text[pos:value.start()], REDACTED]
        pos = value.end()
    return "".join(out) + text[pos:] if out else text


def mask_text(text: str) -> str:
    """``text`` with every remembered secret value, URI password and
    ``secret-key=value`` value replaced by ``*********(redacted)``."""
    if not text:
        return text
    pattern = _known_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _URI_PASSWORD.sub(lambda m: f"{m.group('head')}{REDACTED}{m.group('at')}", text)
    return _mask_pairs(text)


def redact_tree(obj: Any, prefix: str = "", values_too: bool = False) -> Any:
    """A copy of ``obj`` (dicts, lists, scalars) safe to write anywhere: the
    value at every secret key (dotted path from ``prefix``) is ``REDACTED``,
    every string is passed through ``mask_text``. ``values_too`` adds Spark's
    value rule (a string value that itself matches the rule is redacted), for
    config dumps, where every value is a setting."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if (is_secret_key(path) or (values_too and isinstance(v, str) and not _exempt(path)
                                        and _matches_rule(v))) \
                    and not isinstance(v, Mapping) and v not in (None, ""):
                out[mask_text(str(k))] = REDACTED
            else:
                out[mask_text(str(k))] = redact_tree(v, path, values_too)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact_tree(v, prefix, values_too) for v in obj]
    if isinstance(obj, str):
        return mask_text(obj)
    return obj


def redact_config(config: Mapping) -> dict:
    """A config as a nested dict (``CourierConfig.to_dict()``) -> the copy for
    dumps: run summaries, logs. The running job keeps the real values."""
    return redact_tree(config, values_too=True)
