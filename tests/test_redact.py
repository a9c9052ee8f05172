"""The redaction rule (courier_spark/core/redact.py): Spark's key rule, remembered
values, URI passwords; the logging filter on every handler; no pyspark needed."""
from __future__ import annotations

import logging
import re
from dataclasses import fields, is_dataclass

import pytest

from courier_spark.core import logs, redact
from courier_spark.core.config import load_config, redacted_dict
from courier_spark.core.redact import REDACTED, is_secret_key, mask_text, redact_config, redact_tree
from courier_spark.core.schema import CourierConfig


@pytest.fixture(autouse=True)
def _fresh_registry():
    redact.forget_secrets()
    yield
    redact.forget_secrets()


def test_the_rule_is_sparks_default():
    """The regex is the one in the installed Spark's jar (checked when pyspark's jars are here)."""
    import zipfile
    from pathlib import Path
    pyspark = pytest.importorskip("pyspark")
    jar = next(Path(pyspark.__file__).parent.joinpath("jars").glob("spark-core_*.jar"), None)
    if jar is None:
        pytest.skip("no spark-core jar")
    with zipfile.ZipFile(jar) as z:
        text = z.read("org/apache/spark/internal/config/package$.class")
    assert redact.SPARK_REDACTION_REGEX.encode() in text
    assert b"*********(redacted)" in zipfile.ZipFile(jar).read("org/apache/spark/util/Utils$.class")


@pytest.mark.parametrize("key", [
    "spark.extra.spark.hadoop.fs.s3a.secret.key", "spark.extra.spark.hadoop.fs.s3a.access.key",
    "spark.extra.fs.s3a.accesskey", "spark.extra.spark.hadoop.fs.s3a.session.token",
    "online.password", "spark.extra.spark.authenticate.SECRET", "x.AWS_SECRET_ACCESS_KEY", "Password"])
def test_keys_that_are_secrets(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "spark.extra.spark.hadoop.fs.s3a.endpoint", "spark.extra.spark.hadoop.fs.s3a.access_key",   # Spark: [.]? only
    "online.password_env", "evaluate.dnn.token_buckets", "evaluate.dnn.max_title_tokens",
    "online.key_prefix", "spark.master", "train.method"])
def test_keys_that_are_not(key):
    assert not is_secret_key(key)


def test_nested_dicts_redacted_by_full_path_other_values_kept():
    cfg = {"spark": {"master": "local[2]", "extra": {
        "spark": {"hadoop": {"fs": {"s3a": {"secret": {"key": "SeCr3t/abc+def"}, "access": {"key": "AKIAFAKE"},
                                            "endpoint": "http://127.0.0.1:9000"}}}},
        "spark.hadoop.fs.s3a.session.token": 12345678}},
        "online": {"password_env": "COURIER_REDIS_PASSWORD", "port": 6379},
        "evaluate": {"dnn": {"token_buckets": 4096}}}
    out = redact_config(cfg)
    s3a = out["spark"]["extra"]["spark"]["hadoop"]["fs"]["s3a"]
    assert s3a == {"secret": {"key": REDACTED}, "access": {"key": REDACTED}, "endpoint": "http://127.0.0.1:9000"}
    assert out["spark"]["extra"]["spark.hadoop.fs.s3a.session.token"] == REDACTED   # a number is no exception
    assert out["spark"]["master"] == "local[2]"
    assert out["online"] == {"password_env": "COURIER_REDIS_PASSWORD", "port": 6379}   # a NAME, kept
    assert out["evaluate"]["dnn"]["token_buckets"] == 4096
    assert cfg["spark"]["extra"]["spark"]["hadoop"]["fs"]["s3a"]["secret"]["key"] == "SeCr3t/abc+def"   # a copy


def test_sparks_value_rule_in_config_dumps_only():
    cfg = {"spark": {"extra": {"spark.executorEnv.X": "--conf a.password=hunter22"}}, "note": "tokens"}
    assert redact_config(cfg)["spark"]["extra"]["spark.executorEnv.X"] == REDACTED
    assert redact_config(cfg)["note"] == REDACTED
    assert redact_tree({"note": "tokens"}) == {"note": "tokens"}   # summaries: key rule + masking only


@pytest.mark.parametrize("text, secret", [
    ("cannot reach redis://courier:pa55word!@127.0.0.1:6379/0", "pa55word!"),
    ("root s3a://AKIAFAKE:wJalrXUtnFEMI/K7MDENG@bucket/data is not reachable", "wJalrXUtnFEMI/K7MDENG"),
    ("--conf spark.hadoop.fs.s3a.secret.key=abc123XYZ --conf spark.master=local", "abc123XYZ"),
    ('{"fs.s3a.access.key": "AKIAFAKE2", "x": 1}', "AKIAFAKE2"),
    ("AWS_SECRET_ACCESS_KEY=zzzzSECRET cmd", "zzzzSECRET"),
    ("https://host/path?token=tok-9f8e7d&page=2", "tok-9f8e7d"),
    ("JAVA_OPTS=-Dfs.azure.sas.token=sv2020FAKE -Xmx1g", "sv2020FAKE"),   # a pair inside a pair's value
])
def test_text_rules_mask_uri_passwords_and_secret_pairs(text, secret):
    out = mask_text(text)
    assert secret not in out and REDACTED in out, out
    assert mask_text(out) == out   # idempotent: a record seen by two handlers


def test_text_rules_leave_ordinary_text():
    for text in ("hdfs://namenode:8020/data/x", "mail bob@example.com", "token_buckets=4096", "password_env=COURIER_REDIS_PASSWORD",
                 "the password in $COURIER_REDIS_PASSWORD", "redis://127.0.0.1:6379/0", "step 3: loss=0.25"):
        assert mask_text(text) == text


def test_remembered_values_masked_anywhere_longest_first():
    redact.remember_secrets(["abcd", "abcdefgh", "xy"])   # "xy": too short to mask inside text
    assert mask_text("java.io.IOException: bad key abcdefgh; also abcd; xy") == \
        f"java.io.IOException: bad key {REDACTED}; also {REDACTED}; xy"


def test_secret_values_from_config_env_named_and_env_by_name():
    env = {"MY_REDIS_PW": "redis-pw-123", "AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "envsecret",
           "HOME": "/home/x", "FEATURE_TOKEN_ENABLED": "true"}
    tree = {"online": {"password_env": "MY_REDIS_PW"}, "spark": {"extra": {"a.secret.key": "s3cr3t!"}},
            "evaluate": {"dnn": {"token_buckets": 4096}}}
    assert redact.secret_values(tree, env) == {"redis-pw-123", "AKIAENV", "envsecret", "s3cr3t!"}


def _schema_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in fields(cls):
        default = getattr(cls(), f.name)
        out += _schema_paths(type(default), f"{prefix}{f.name}.") if is_dataclass(default) else [f"{prefix}{f.name}"]
    return out


def test_exemptions_are_fields_of_the_schema_and_every_other_match_is_redacted():
    paths = _schema_paths(CourierConfig)
    assert redact.NOT_SECRET_FIELDS <= set(paths)   # an exemption outliving its field fails here
    dumped = redacted_dict(CourierConfig())
    for path in paths:
        if re.search(redact.SPARK_REDACTION_REGEX, path) and is_secret_key(path):
            node = dumped
            for k in path.split("."):
                node = node[k]
            assert node in (REDACTED, None, ""), path


def test_load_config_remembers_and_dumps_redact_but_the_job_keeps_values(tmp_path, monkeypatch):
    monkeypatch.setenv("COURIER_T_REDIS", "redis-from-env-77")
    yml = tmp_path / "c.yaml"
    yml.write_text("spark:\n  extra:\n    spark.hadoop.fs.s3a.access.key: AKIAYAMLFAKE\n"
                   "online:\n  password_env: COURIER_T_REDIS\n")
    cfg = load_config(yml, ["spark.extra.spark.hadoop.fs.s3a.secret.key=set-secret-99"])
    assert cfg.spark.extra["spark"]["hadoop"]["fs"]["s3a"]["secret"]["key"] == "set-secret-99"   # real value
    assert cfg.spark.extra["spark.hadoop.fs.s3a.access.key"] == "AKIAYAMLFAKE"
    from courier_spark.core.spark import flat_settings   # what get_spark hands to Spark
    assert flat_settings(cfg.spark.extra)["spark.hadoop.fs.s3a.secret.key"] == "set-secret-99"
    text = str(redacted_dict(cfg))
    assert "set-secret-99" not in text and "AKIAYAMLFAKE" not in text and "COURIER_T_REDIS" in text
    line = mask_text(f"{cfg!r} and redis-from-env-77")
    for secret in ("set-secret-99", "AKIAYAMLFAKE", "redis-from-env-77"):
        assert secret not in line


def test_every_handler_masks_message_args_and_traceback(tmp_path, capsys):
    redact.remember_secrets(["hunter2-secret"])
    log_file = tmp_path / "run.log"
    logs.configure_logging(1, str(log_file))
    try:
        log = logs.logger("t")
        log.info("connecting with %s", "hunter2-secret")
        try:
            raise RuntimeError("Py4JJavaError: s3a://AK:hunter2-secret@b/x denied")
        except RuntimeError:
            logging.getLogger("py4j.java_gateway").error("call failed", exc_info=True)
            log.debug("trace", exc_info=True)
    finally:
        logs.close_log_file()
        logs.configure_logging(0)
        import sys
        sys.excepthook = sys.__excepthook__
    err = capsys.readouterr().err
    text = log_file.read_text()
    assert "connecting with" in err and "Py4JJavaError" in err and "RuntimeError" in text
    assert "hunter2-secret" not in err and "hunter2-secret" not in text
    assert text.count(REDACTED) >= 3
    bad = logging.LogRecord("courier.t", logging.INFO, __file__, 1, "bad format %d", ("hunter2-secret",), None)
    assert logs.MaskSecrets().filter(bad) and bad.getMessage() == f"bad format %d (arguments: ('{REDACTED}',))"


def test_a_users_spark_redaction_regex_widens_the_rule_never_narrows_it(tmp_path):
    azure = "spark.extra.spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net"
    assert not is_secret_key(azure)   # Spark's default misses Azure's account keys
    cfg = load_config(None, [f"{azure}=AzUrEkEyFAKE==", "spark.extra.spark.redaction.regex=(?i)account[.]key"])
    assert is_secret_key(azure) and is_secret_key("spark.extra.fs.s3a.secret.key")
    assert "AzUrEkEyFAKE" not in str(redacted_dict(cfg)) and "AzUrEkEyFAKE" not in mask_text("key AzUrEkEyFAKE==")
    from courier_spark.core.errors import ConfigError
    with pytest.raises(ConfigError, match="spark.redaction.regex: not a regular expression"):
        load_config(None, ["spark.extra.spark.redaction.regex=(unclosed"])


def test_masking_a_long_line_takes_linear_time():
    import time
    for line in ("a:" * 50_000 + "@", "password=" * 10_000, "x" * 100_000, "s3a://" + "a." * 50_000):
        t0 = time.perf_counter()
        mask_text(line)
        assert time.perf_counter() - t0 < 2.0, line[:20]   # quadratic backtracking took minutes here
