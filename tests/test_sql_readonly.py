"""`courier sql` is the analysts' read-only path: it works on a root the user
may read but not write and changes nothing under it (its log goes to a local
directory), and every mistake (file, statement, table, root, --out, log dir)
is one `courier: error:` line and exit 2 found before Spark starts."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from courier_spark import cli
from courier_spark.evaluate.metrics import per_category_auc, per_category_lift
from courier_spark.evaluate.sql_runner import delta_table_exists, write_predictions
from courier_spark.paths import TablePaths


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under ``root`` with (mtime ns, size, mode):
    what "nothing under the root changed" compares (tests may run as root,
    where a read-only mode does not stop writes)."""
    out = {".": (root.stat().st_mtime_ns, 0, root.stat().st_mode)} if root.exists() else {}
    for p in root.rglob("*"):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size if p.is_file() else 0, st.st_mode)
    return out


def set_read_only(root: Path, read_only: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        w = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        p.chmod(mode & ~w if read_only else mode | stat.S_IWUSR)


def toy_predictions(seed: int = 3) -> pd.DataFrame:
    """Two variants of one model kind over three categories, tied scores."""
    rng = np.random.default_rng(seed)
    n = 240
    base = pd.DataFrame({"event_id": [f"e{i}" for i in range(n)], "request_id": "r", "session_id": "s",
                         "category": rng.choice(["bags", "shoes", "tops"], n),
                         "label": (rng.random(n) < 0.3).astype(int)})
    parts = []
    for variant, lift in (("baseline", 0.0), ("courier_cluster_id", 0.4)):
        p = base.copy()
        p["variant"], p["model_kind"] = variant, "dnn"
        p["score"] = np.round(rng.random(n) + lift * p["label"], 1)
        parts.append(p)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def predictions_root(spark, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A root holding only gold/predictions (what per_category_auc_lift reads)."""
    root = tmp_path_factory.mktemp("readonly") / "ds"
    preds = toy_predictions()
    write_predictions(spark, preds, TablePaths.for_root(str(root)).predictions)
    return root, preds


def test_sql_on_read_only_root_changes_nothing_there(predictions_root, tmp_path, monkeypatch, capsys):
    root, preds = predictions_root
    assert delta_table_exists(TablePaths.for_root(str(root)).predictions)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out_csv = tmp_path / "out" / "auc.csv"
    out_csv.parent.mkdir()
    before = snapshot(root)
    set_read_only(root, True)
    try:
        if os.geteuid() != 0:   # as root a read-only mode stops nothing; the snapshot still checks
            with pytest.raises(PermissionError):
                (root / "probe").write_text("x")
        rc = cli.main(["sql", "per_category_auc_lift", "--root", str(root), "--out", str(out_csv)])
    finally:
        set_read_only(root, False)
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    after = snapshot(root)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:10]
    assert not (root / "_runs").exists()
    # the run's log went to the user's cache instead
    logs = list((tmp_path / "cache" / "courier" / "logs").glob("*-sql.log"))
    assert len(logs) == 1 and "per_category_auc_lift.sql: reads " in logs[0].read_text()
    # and the result is the brute-force per-category AUC and lift
    got = pd.read_csv(out_csv)
    exp = per_category_lift(per_category_auc(preds))
    m = exp.merge(got, on=["model_kind", "variant", "category"], suffixes=("_py", "_sql"))
    assert len(m) == len(exp) == len(got) == 2 * 3
    np.testing.assert_allclose(m["auc_sql"], m["auc_py"], atol=1e-9, rtol=0)
    np.testing.assert_allclose(m["lift_auc_pct_sql"], m["lift_auc_pct_py"], atol=1e-9, rtol=0)


def test_sql_log_dir_flag(predictions_root, tmp_path, capsys):
    root, _ = predictions_root
    before = snapshot(root)
    rc = cli.main(["sql", "per_category_auc_lift.sql", "--root", str(root), "--limit", "2",
                   "--log-dir", str(tmp_path / "mylogs")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    assert "(6 rows, first 2 shown)" in captured.out
    assert len(list((tmp_path / "mylogs").glob("*-sql.log"))) == 1
    assert snapshot(root) == before


@pytest.fixture
def no_spark(monkeypatch):
    """A tripwire: these mistakes must be found before Spark starts."""
    def started(*a, **k):
        raise AssertionError("Spark was started before the mistake was found")
    monkeypatch.setattr("courier_spark.spark.get_spark", started)


def test_each_sql_mistake_is_one_line_before_spark(tmp_path, monkeypatch, capsys, no_spark):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    (root / "silver").mkdir(parents=True)
    # a table another process is still creating: its log has no commit yet
    (root / "gold" / "predictions" / "_delta_log").mkdir(parents=True)
    two = tmp_path / "two.sql"
    two.write_text("SELECT 1; -- one\nSELECT 2;")
    placeholder = tmp_path / "ph.sql"
    placeholder.write_text("SELECT * FROM delta.`${root}/${table}`")
    empty = tmp_path / "empty.sql"
    empty.write_text("-- nothing\n")
    plain = tmp_path / "plain.sql"
    plain.write_text("SELECT 1 AS x")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    r = ["--root", str(root)]
    cases = [
        (["nope.sql", *r], "SQL file not found: nope.sql (neither a file nor a shipped query; shipped: "
                           "cluster_category_purity.sql"),
        ([str(tmp_path), *r], f"SQL file {tmp_path} is not a file"),
        ([str(two), *r], "holds more than one SQL statement"),
        ([str(placeholder), *r], "unknown placeholder(s) ['table']"),
        ([str(empty), *r], "no SQL statement"),
        (["per_category_auc_lift", *r], f"per_category_auc_lift.sql: no Delta table at {root}/gold/predictions "
                                        "(table 'gold/predictions'); run `courier evaluate` first"),
        (["ctr_by_cluster", *r], f"no Delta table at {root}/silver/ctr_samples"),
        (["per_category_auc_lift", "--root", str(tmp_path / "missing")], "does not exist"),
        (["per_category_auc_lift", "--root", str(a_file)], "is a file, not a directory"),
        ([str(plain), *r, "--out", str(tmp_path / "no" / "such" / "x.csv")], "directory"),
        ([str(plain), *r, "--log-dir", str(a_file / "logs")], "cannot write the run log to"),
        ([str(plain), *r, "--limit", "-1"], "--limit must be 0 or more"),
    ]
    before = snapshot(root)
    for args, expected in cases:
        rc = cli.main(["sql", *args])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2, (args, err)
        assert len(lines) == 1 and lines[0].startswith("courier: error: ") and expected in lines[0], (args, err)
        assert "Traceback" not in err
    assert snapshot(root) == before                       # nothing created, not even the missing root
    assert not (tmp_path / "missing").exists()
