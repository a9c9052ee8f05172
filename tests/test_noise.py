"""Console noise fixed at its source: third-party warning filters (in-process
and inherited by child processes), the LightGBM feature frame built at once,
the resolved Delta jar list, the driver's log4j2 file, parquet row checks."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from courier_spark.core import noise
from courier_spark.core.noise import silence_third_party_warnings

# A child that issues warnings "from" the given modules (the warnings module
# attributes a warning to the issuing frame's __name__).
_CHILD = """
import warnings
for mod, cat in [("petastorm.fs_utils", FutureWarning),
                 ("petastorm.etl.dataset_metadata", FutureWarning),
                 ("petastorm.spark.spark_dataset_converter", DeprecationWarning),
                 ("courier_spark.somewhere", FutureWarning),
                 ("petastormx", FutureWarning)]:
    exec(compile("import warnings; warnings.warn('x from ' + MOD, CAT)", "/fake/" + mod + ".py", "exec"),
         {"__name__": mod, "MOD": mod, "CAT": cat})
"""


def _child_stderr(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True, timeout=60).stderr


def test_child_process_inherits_the_filters(monkeypatch):
    # DeprecationWarning is hidden by default outside __main__: show it, so the
    # control run proves the petastorm DeprecationWarning would appear.
    monkeypatch.setenv("PYTHONWARNINGS", "default::DeprecationWarning")
    control = _child_stderr(dict(os.environ))
    assert "x from petastorm.fs_utils" in control
    assert "DeprecationWarning: x from petastorm.spark.spark_dataset_converter" in control

    silence_third_party_warnings()
    env = dict(os.environ)
    assert env["PYTHONWARNINGS"].startswith("default::DeprecationWarning,")   # kept, ours after it
    out = _child_stderr(env)
    assert "Invalid -W option" not in out
    assert "petastorm.fs_utils" not in out
    assert "petastorm.etl.dataset_metadata" not in out
    assert "petastorm.spark.spark_dataset_converter" not in out
    # Only petastorm's modules: ours, and a package that merely shares the prefix, still warn.
    assert "FutureWarning: x from courier_spark.somewhere" in out
    assert "FutureWarning: x from petastormx" in out


def test_env_entries_are_idempotent_and_well_formed(monkeypatch):
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    silence_third_party_warnings()
    first = os.environ["PYTHONWARNINGS"]
    silence_third_party_warnings()
    assert os.environ["PYTHONWARNINGS"] == first
    entries = first.split(",")
    assert len(entries) == len(set(entries))
    assert "ignore::FutureWarning:petastorm.fs_utils" in entries
    assert "ignore::DeprecationWarning:petastorm.spark.spark_dataset_converter" in entries
    for e in entries:
        action, message, category, module = e.split(":")
        assert action == "ignore" and message == "" and category in ("FutureWarning", "DeprecationWarning")
        assert module.split(".")[0] == "petastorm" and all(p.isidentifier() for p in module.split("."))


def test_in_process_filters_cover_every_petastorm_module():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_third_party_warnings()
        for mod in ("petastorm", "petastorm.reader", "petastorm.a.module.not.listed", "petastormx",
                    "courier_spark.x"):
            exec(compile("import warnings; warnings.warn('w', FutureWarning)", f"/fake/{mod}.py", "exec"),
                 {"__name__": mod})
    assert sorted(str(w.filename) for w in seen) == ["/fake/courier_spark.x.py", "/fake/petastormx.py"]


def test_noise_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import courier_spark.core.noise as n; n.silence_third_party_warnings(); "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'courier_spark'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert "petastorm.fs_utils" in noise.package_modules("petastorm")


# --------------------------------------------------------------------------- lgbm feature frame
@pytest.mark.parametrize("variant", ["none", "vector", "simscore", "cluster_id"])
def test_lgbm_features_built_at_once_equal_the_old_frame(variant):
    from courier_spark.core.schema import LgbmConfig
    from courier_spark.evaluate.ctr_stats import STAT_KEYS, CtrStatistics
    from courier_spark.evaluate.frames import make_toy_ctr_frames
    from courier_spark.evaluate.lgbm import LgbmModel, _features
    # Wide enough (256 + 150 columns) that inserting column by column fragments the frame.
    emb_dim, k = 256, 150
    tr, te = make_toy_ctr_frames(n_users=30, n_items=150, emb_dim=emb_dim, k_slots=k, seed=1)["courier_vector"]
    y = tr["label"].to_numpy()
    keys = dict(STAT_KEYS, **({"cluster": "target_cluster_id"} if variant == "cluster_id" else {}))
    stats = CtrStatistics.fit(tr, y, keys, 5, 20.0)
    m = LgbmModel(booster=None, image_feature=variant, cfg=LgbmConfig(), seed=0, stats=stats,  # type: ignore[arg-type]
                  categories={c: i for i, c in enumerate(sorted(tr["category"].unique()))},
                  n_slots=k if variant in ("simscore", "cluster_id") else 0,
                  vector_dim=emb_dim if variant == "vector" else 0)
    for df, train_stats in ((tr, stats.train_values), (te, None)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = _features(df, m, train_stats)
        perf = [w for w in seen if issubclass(w.category, pd.errors.PerformanceWarning)]
        assert perf == [], f"{len(perf)} PerformanceWarning(s), first: {perf[0].message}"
        # the values, from the input columns by hand (the old builder's were checked equal once)
        np.testing.assert_allclose(got["log_price"], np.log1p(df["price"].astype(float)))
        np.testing.assert_allclose(got["hist_len"], [len(h) for h in df["hist_item_ids"]])
        if variant == "vector":
            np.testing.assert_allclose(got[[f"emb_{j}" for j in range(emb_dim)]].to_numpy(),
                                       np.stack(df["target_embedding"].to_numpy()).astype(float), rtol=1e-6)
        if variant == "simscore":
            first = np.array([np.nan if s is None or len(s) == 0 or s[0] is None else s[0]
                              for s in df["sim_scores"]], float)
            np.testing.assert_allclose(got["sim_0"], first, rtol=1e-6)
        assert got.shape[1] == 12 + {"none": 0, "vector": emb_dim, "simscore": k + 3, "cluster_id": 6}[variant]


# --------------------------------------------------------------------------- Spark settings (no session)
def _jar_list(tmp_path: Path, package: str, names=("a.jar", "b.jar"), create=True) -> Path:
    paths = [tmp_path / n for n in names]
    if create:
        for p in paths:
            p.write_bytes(b"PK")
    f = tmp_path / "courier-delta-jars.txt"
    f.write_text(f"# package: {package}\n# comment\n" + "".join(f"{p}\n" for p in paths))
    return f


def test_spark_uses_the_resolved_jar_list_when_complete(tmp_path):
    from courier_spark.core.schema import SparkConfig
    from courier_spark.core.spark import jar_settings
    cfg = SparkConfig()
    f = _jar_list(tmp_path, cfg.delta_package)
    assert jar_settings(cfg, f) == {"spark.jars": f"{tmp_path / 'a.jar'},{tmp_path / 'b.jar'}"}
    # Explicit jars win over the list.
    assert jar_settings(SparkConfig(jars="/x/delta.jar"), f) == {"spark.jars": "/x/delta.jar"}


@pytest.mark.parametrize("case", ["no_list", "jar_missing", "other_package", "empty"])
def test_spark_falls_back_to_packages(tmp_path, case):
    from courier_spark.core.schema import SparkConfig
    from courier_spark.core.spark import jar_settings
    cfg = SparkConfig()
    if case == "no_list":
        f = tmp_path / "absent.txt"
    elif case == "jar_missing":
        f = _jar_list(tmp_path, cfg.delta_package)
        (tmp_path / "b.jar").unlink()
    elif case == "other_package":
        f = _jar_list(tmp_path, "io.delta:delta-spark_2.13:3.9.9")
    else:
        f = _jar_list(tmp_path, cfg.delta_package, names=())
    assert jar_settings(cfg, f) == {"spark.jars.packages": cfg.delta_package}


def test_default_jar_list_location_and_override(tmp_path, monkeypatch):
    from courier_spark.core.schema import SparkConfig
    from courier_spark.core.spark import delta_jars_file, jar_settings
    assert delta_jars_file() == Path(sys.prefix) / "courier-delta-jars.txt"
    assert delta_jars_file(str(tmp_path / "x.txt")) == tmp_path / "x.txt"
    # spark.delta_jars_file is the list jar_settings reads
    (tmp_path / "a.jar").write_bytes(b"")
    cfg = SparkConfig(delta_jars_file=str(tmp_path / "x.txt"))
    (tmp_path / "x.txt").write_text(f"# package: {cfg.delta_package}\n{tmp_path / 'a.jar'}\n")
    assert jar_settings(cfg) == {"spark.jars": str(tmp_path / "a.jar")}


def test_driver_java_options_name_the_log4j2_file(tmp_path):
    from courier_spark.core.spark import LOG4J2_PROPERTIES, NETTY_OPTS, driver_java_options
    assert LOG4J2_PROPERTIES.is_file()
    text = LOG4J2_PROPERTIES.read_text()
    assert "rootLogger.level = warn" in text and "org.apache.hadoop.util.NativeCodeLoader" in text
    opts = driver_java_options().split()
    assert opts[0] == NETTY_OPTS
    assert opts[1] == f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES.resolve().as_uri()}"
    spaced = tmp_path / "a dir" / "log4j2.properties"
    spaced.parent.mkdir()
    spaced.write_text("status = error\n")
    assert len(driver_java_options(spaced).split()) == 2          # a URI: no space to split on
    assert driver_java_options(tmp_path / "missing.properties") == NETTY_OPTS


# --------------------------------------------------------------------------- petastorm materialisation
def test_petastorm_row_groups_stay_small(spark, tmp_path):
    """The id frame is written in row groups near ``ROW_GROUP_BYTES`` (a few
    hundred rows), never one large one: petastorm shuffles and shards at that
    grain. (When rows carried image blobs, parquet-mr's first size check at
    100 rows made ~10x larger groups and a "Too much memory used" WARN.)"""
    import pyarrow.parquet as pq
    from training.loader import LoaderSpec, SampleLoader, pretrain_training_frame

    n = 20_000
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)],
                        "pv_item_ids": [rng.integers(0, 10**9, 5).tolist() for _ in range(n)],
                        "pv_labels": [[1, 0, 0, 0, 0]] * n,
                        "hist_item_ids": [rng.integers(0, 10**9, 5).tolist() for _ in range(n)]})
    samples = spark.createDataFrame(pdf, "request_id string, pv_item_ids array<long>, pv_labels array<int>, "
                                         "hist_item_ids array<long>")
    items = spark.createDataFrame([(1, b"x")], "item_id long, image binary")
    loader = SampleLoader.from_frame(pretrain_training_frame(samples, 5, 5), items, LoaderSpec(5, 5, 16, 4),
                                     str(tmp_path / "cache"))
    try:
        assert len(loader) == n
        files = [u.replace("file://", "", 1) if u.startswith("file://") else u.replace("file:", "", 1)
                 for u in loader.converter.file_urls]
        sizes = [md.row_group(i).total_byte_size for md in (pq.ParquetFile(f).metadata for f in files)
                 for i in range(md.num_row_groups)]
        assert sizes and max(sizes) < 1.5 * SampleLoader.ROW_GROUP_BYTES, max(sizes)
        assert len(sizes) >= 20, len(sizes)
    finally:
        loader.delete()


def test_executor_env_carries_the_filters(monkeypatch):
    from courier_spark.core.spark import worker_env_settings
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    assert worker_env_settings() == {}
    silence_third_party_warnings()
    env = worker_env_settings()["spark.executorEnv.PYTHONWARNINGS"]
    assert env == os.environ["PYTHONWARNINGS"] and "ignore::FutureWarning:petastorm.fs_utils" in env.split(",")
