"""Every mistake that can be found without Spark is found before it starts
(stages.preflight, run by the CLI): one `courier: error:` line, exit 2, in
well under 2 s, nothing created. The tables are real Delta tables (one tiny
root per module); the checks read their logs without Spark."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from courier_spark import cli
from courier_spark.core.config import load_config
from courier_spark.core.errors import ArtifactNotFoundError, MissingTableError, VersionNotFoundError
from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import preflight


@pytest.fixture(scope="module")
def root(spark, tmp_path_factory) -> TablePaths:
    """Feature-stage inputs and item_visual (one row each) and gold/centroids
    with versions c0001, c0002 (partitioned, as `courier cluster` writes it)."""
    p = TablePaths.for_root(str(tmp_path_factory.mktemp("preflight") / "ds"))
    row = spark.createDataFrame([(1, "x")], "item_id long, b string")
    for t in (p.item_embeddings, p.silver_items, p.ctr_samples, p.item_visual_features):
        row.write.format("delta").save(t)
    for cv in ("c0001", "c0002"):
        (spark.createDataFrame([(cv, 0)], "centroid_version string, cluster_id int").write.format("delta")
         .mode("append").partitionBy("centroid_version").save(p.centroids))
    return p


@pytest.fixture
def no_spark(monkeypatch):
    def started(*a, **k):
        raise AssertionError("Spark was started before the mistake was found")
    monkeypatch.setattr("courier_spark.core.spark.get_spark", started)


def free_port() -> int:
    with socket.socket() as s:      # bound and closed: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_each_mistake_is_one_line_before_spark(root, tmp_path, capsys, no_spark):
    r = ["--root", root.root]
    missing = str(tmp_path / "no" / "such" / "dir")
    theirs = root.root + "/../theirs"
    cases = [
        (["validate", "--root", missing], f"no Delta table at {missing}/bronze/items; run `courier generate"),
        (["pipeline", "--from", "validate", "--root", missing], "/bronze/items; run `courier generate"),
        (["samples", *r], "no Delta table at " + root.root + "/silver/impressions; run `courier validate` first"),
        (["pipeline", "--from", "samples", "--until", "features", *r], "/silver/impressions"),
        (["features", *r, "--set", "features.centroid_version=c0999"],
         f"centroid version 'c0999' is not in {root.centroids}; available: c0001, c0002"),
        (["online", *r, "--set", f"online.port={free_port()}"], "cannot be reached"),
        (["online", "--root", missing], "no Delta table at " + missing + "/feature_store/item_visual"),
        (["point_in_time", *r], "point_in_time needs --set retrieval.input=PATH and --set retrieval.output=PATH"),
        (["point_in_time", *r, "--set", f"retrieval.input={tmp_path}/ev", "--set", f"retrieval.output={theirs}"],
         "is not a Delta table (nothing there)"),
        (["point_in_time", *r, "--set", f"retrieval.input={root.silver_items}", "--set",
          f"retrieval.output={root.centroids}"], "is the root's table gold/centroids"),
        (["feast", "--root", missing], "/feature_store/item_visual; run `courier features` first"),
    ]
    before = tree(Path(root.root))
    for args, expected in cases:
        t0 = time.perf_counter()
        rc = cli.main(args)
        secs = time.perf_counter() - t0
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("courier: error: "), (args, err)
        assert expected in lines[0], (args, lines[0])
        assert secs < 2.0, (args, secs)
    assert tree(Path(root.root)) == before and not (tmp_path / "no").exists()   # nothing created


def test_inputs_made_earlier_in_the_run_are_not_required(root, tmp_path):
    cfg = load_config(None, ["features.centroid_version=c0002"])
    preflight(["features"], cfg, root)                                 # c0002 exists
    bare = TablePaths.for_root(str(tmp_path / "bare"))
    preflight(["generate", "validate", "samples"], cfg, bare)          # all made on the way
    with pytest.raises(MissingTableError, match="bronze/items"):
        preflight(["validate"], cfg, bare)
    # a centroid version the same run's `cluster` makes cannot be checked yet: left to the stage
    c7 = load_config(None, ["features.centroid_version=c0007"])
    with pytest.raises(ArtifactNotFoundError, match="no trained model for method 'courier'"):
        preflight(["embed", "cluster", "features"], c7, root)          # embed needs a model (a listing)
    v1 = Path(root.models) / "courier" / "v0001"
    v1.mkdir(parents=True)
    (v1 / "artifact.json").write_text("{}")                           # complete: its marker is written
    preflight(["embed", "cluster", "features"], c7, root)
    with pytest.raises(ArtifactNotFoundError, match="courier/v0002 does not exist"):
        preflight(["embed"], load_config(None, ["embed.model_version=v0002"]), root)
    with pytest.raises(ArtifactNotFoundError, match="simclr/v0001 does not exist"):
        preflight(["cluster"], load_config(None, ["cluster.model_version=simclr/v0001"]), root)
    with pytest.raises(VersionNotFoundError, match="c0007"):
        preflight(["features"], c7, root)
    assert not Path(bare.root).exists()


@pytest.fixture(scope="module")
def items_root(spark, tmp_path_factory) -> TablePaths:
    """silver/items whose log holds an overwrite (files removed) and an append;
    bronze/items with another category; bronze/impressions and the
    pre-training samples (present: only their existence is checked)."""
    p = TablePaths.for_root(str(tmp_path_factory.mktemp("categories") / "ds"))
    items = "item_id long, category string"
    spark.createDataFrame([(1, "old_gone")], items).write.format("delta").save(p.silver_items)
    spark.createDataFrame([(1, "shoes"), (2, None)], items).write.format("delta").mode("overwrite").save(p.silver_items)
    spark.createDataFrame([(3, "bags")], items).write.format("delta").mode("append").save(p.silver_items)
    spark.createDataFrame([(1, "shoes"), (4, "hats")], items).write.format("delta").save(p.bronze_items)
    spark.createDataFrame([(1, "x")], "request_id long, b string").write.format("delta").save(p.bronze_impressions)
    spark.createDataFrame([(1, "x")], "request_id long, b string").write.format("delta").save(p.pretrain_samples)
    return p


def test_train_categories_checked_against_the_items_before_spark(items_root, spark, capsys, no_spark):
    from courier_spark.core import delta_log
    # the live rows' categories, as Spark reads them (the overwritten file's value is gone)
    assert delta_log.column_values(items_root.silver_items, "category") == {"shoes", "bags"} == {
        r[0] for r in spark.read.format("delta").load(items_root.silver_items).dropna().select("category").collect()}
    assert delta_log.column_values(items_root.silver_items, "category", max_files=1) is None   # left to Spark
    assert delta_log.column_values(items_root.silver_items, "no_such_column") is None
    r = ["--root", items_root.root]
    cases = [
        (["train", *r, "--set", "train.categories=[shoes,nope]"],
         "train.categories names nope, not a category of silver/items (have: bags, shoes)"),
        # silver/items is remade by this run's validate: bronze/items is what it will hold
        (["pipeline", "--from", "validate", "--until", "train", *r, "--set", "train.categories=[bags]"],
         "train.categories names bags, not a category of bronze/items (have: hats, shoes)"),
        (["train", *r, "--set", "train.restrict_histories=true"],
         "train.restrict_histories needs train.categories"),
    ]
    for args, expected in cases:
        t0 = time.perf_counter()
        rc = cli.main(args)
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and expected in lines[0], (args, lines)
        assert time.perf_counter() - t0 < 2.0, args
    cfg = load_config(None, ["train.categories=[shoes, bags]"])
    preflight(["train"], cfg, items_root)                               # known categories: no error
    preflight(["comparisons"], cfg, items_root)
    preflight(["generate", "validate", "samples", "train"], cfg, items_root)   # both made in the run: the stage checks
