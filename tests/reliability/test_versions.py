"""Versions: every feature row names the model and centroid versions that made
it, asking for a version that does not exist is a clear error, and older
versions stay readable after newer ones land."""
from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from courier_spark.core.errors import ConfigError

from courier_spark.core.config import load_config
from courier_spark.core.paths import TablePaths
from courier_spark.pipeline import StageContext, run_stage
from courier_spark.core.tables import read_table, table_version

from ..worlds import png, save_untrained_encoder

# Six stages (two encoder versions through embed -> cluster -> features): about a
# minute on 2 idle cores.
pytestmark = pytest.mark.slow

BASE = ["embed.batch_size=8", "cluster.k=2", "cluster.niter=3", "cluster.nredo=1", "features.k=2"]


def _ctx(spark, paths, *sets: str) -> StageContext:
    return StageContext(spark, load_config(None, [*BASE, *sets]), paths)


@pytest.fixture(scope="module")
def two_versions(spark, tmp_path_factory):
    """Two encoder versions pushed through embed -> cluster -> features, one after the other."""
    paths = TablePaths.for_root(str(tmp_path_factory.mktemp("versions") / "ds"))
    for seed in (0, 1):
        save_untrained_encoder(paths.models, embed_dim=8, image_size=16, seed=seed)
    rng = np.random.default_rng(0)
    items = [(i, "c", png(tuple(int(v) for v in rng.integers(0, 255, 3)), 12), "ok") for i in range(1, 17)]
    (spark.createDataFrame(items, "item_id long, category string, image binary, image_status string")
     .write.format("delta").save(paths.silver_items))
    ctr = [(f"e{i}", 1 + i % 16, [1 + (i + j) % 16 for j in range(i % 4)], "train") for i in range(24)]
    (spark.createDataFrame(ctr, "event_id string, item_id long, hist_item_ids array<long>, split string")
     .write.format("delta").save(paths.ctr_samples))
    runs = {}
    for v in ("v0001", "v0002"):
        ctx = _ctx(spark, paths, f"embed.model_version={v}")
        runs[v] = {s: run_stage(s, ctx) for s in ("embed", "cluster", "features")}
        runs[v]["feature_table_versions"] = (table_version(spark, paths.item_visual_features),
                                             table_version(spark, paths.impression_visual_features))
    return paths, runs


def test_every_feature_row_names_its_versions(spark, two_versions, reliability):
    paths, runs = two_versions
    assert runs["v0001"]["cluster"].centroid_version == "c0001"
    assert runs["v0002"]["cluster"].centroid_version == "c0002"
    from courier_spark.features.feature_tables import current_rows, merge_history

    def by_version(df):
        return {(r.model_version, r.centroid_version): r["count"]
                for r in df.groupBy("model_version", "centroid_version").count().collect()}
    for t, n in ((paths.item_visual_features, 16), (paths.impression_visual_features, 24)):
        df = read_table(spark, t)
        df = current_rows(df) if t == paths.item_visual_features else df
        got = by_version(df)
        assert got == {("courier/v0002", "c0002"): n}, (t, got)      # latest run, no nulls, no mixture
    # item_visual keeps the first run's rows, closed when the second run's opened.
    closed = read_table(spark, paths.item_visual_features).filter("valid_to IS NOT NULL")
    assert by_version(closed) == {("courier/v0001", "c0001"): 16}
    # A row that cannot name its versions is refused, not stored.
    bad = spark.createDataFrame([(1, 0, 0.1, None, "c0002", None)], "item_id long, courier_cluster_id int, "
                                "distance float, model_version string, centroid_version string, "
                                "item_updated_at timestamp")
    before = table_version(spark, paths.item_visual_features)
    with pytest.raises(ValueError, match="1 row\\(s\\) with null model_version; every feature row must name"):
        merge_history(spark, bad, paths.item_visual_features, ["item_id"])
    assert table_version(spark, paths.item_visual_features) == before
    reliability.bad("feature row without model_version")


def test_older_versions_stay_readable(spark, two_versions, reliability):
    from courier_spark.features.cluster import load_centroids
    from courier_spark.features.embed import read_embeddings
    from courier_spark.features.feature_tables import read_features
    from training.artifact import load_artifact

    paths, runs = two_versions
    iv_v1, ev_v1 = runs["v0001"]["feature_table_versions"]
    old_items = read_features(spark, paths.item_visual_features, version=iv_v1)
    assert {(r.model_version, r.centroid_version) for r in old_items.collect()} == {("courier/v0001", "c0001")}
    assert old_items.count() == 16
    old_imps = read_features(spark, paths.impression_visual_features, version=ev_v1)
    assert old_imps.count() == 24 and old_imps.filter(F.col("model_version") != "courier/v0001").count() == 0
    # The second run really changed the rows (so time travel is not trivially equal).
    assert runs["v0002"]["features"].item_visual.merge["closed"] == 16
    assert read_embeddings(spark, paths.item_embeddings, "courier/v0001").count() == 16
    cv, mv, cents = load_centroids(spark, paths.centroids, "c0001")
    assert (cv, mv, cents.shape) == ("c0001", "courier/v0001", (2, 8))
    assert load_artifact(paths.models, "courier", "v0001").load_encoder().embed_dim == 8
    reliability.rerun("features re-run with a newer model (older version kept)")


def test_missing_versions_are_clear_errors(spark, two_versions, reliability):
    from courier_spark.features.cluster import load_centroids
    from courier_spark.features.embed import read_embeddings
    from courier_spark.features.feature_tables import read_features
    from courier_spark.core.errors import FeatureVersionError
    from training.artifact import load_artifact
    from courier_spark.core.errors import ArtifactNotFoundError

    paths, _ = two_versions
    with pytest.raises(ArtifactNotFoundError, match=r"model courier/v0042 does not exist .*available: v0001, v0002"):
        load_artifact(paths.models, "courier", "v0042")
    with pytest.raises(ArtifactNotFoundError, match=r"'2' of 'courier' is not a version name: use 'latest' or vNNNN"):
        load_artifact(paths.models, "courier", "2")
    with pytest.raises(ArtifactNotFoundError, match=r"no trained model for method 'simclr'"):
        load_artifact(paths.models, "simclr")
    emb_before = table_version(spark, paths.item_embeddings)
    with pytest.raises(ArtifactNotFoundError, match=r"model courier/v0042 does not exist"):
        run_stage("embed", _ctx(spark, paths, "embed.model_version=v0042"))
    assert table_version(spark, paths.item_embeddings) == emb_before        # nothing written
    with pytest.raises(LookupError, match=r"no embeddings of model 'courier/v0042' .*available: courier/v0001, "
                                          r"courier/v0002"):
        read_embeddings(spark, paths.item_embeddings, "courier/v0042")
    with pytest.raises(LookupError, match=r"centroid version 'c0042' is not in .*available: c0001, c0002"):
        load_centroids(spark, paths.centroids, "c0042")
    iv_before = table_version(spark, paths.item_visual_features)
    with pytest.raises(LookupError, match=r"centroid version 'c0042' is not in"):
        run_stage("features", _ctx(spark, paths, "features.centroid_version=c0042"))
    assert table_version(spark, paths.item_visual_features) == iv_before
    with pytest.raises(ConfigError, match=r"cluster.centroid_version: expected auto or a version such as c0001, "
                                          r"got '42'"):
        run_stage("cluster", _ctx(spark, paths, "cluster.centroid_version=42"))   # when the config is loaded
    last = table_version(spark, paths.item_visual_features)
    with pytest.raises(FeatureVersionError, match=rf"has no version 99; available versions: 0\.\.{last}"):
        read_features(spark, paths.item_visual_features, version=99)
    from courier_spark.core.errors import TableVersionError
    with pytest.raises(TableVersionError, match=r"silver/items has no version 5; available versions: 0\.\.0"):
        read_table(spark, paths.silver_items, version=5)
    assert read_table(spark, paths.silver_items, version=0).count() == 16
    reliability.bad("table version 5", "model version v0042", "malformed model version", "model of an untrained method",
                    "embed with missing model", "embeddings of missing model", "centroid version c0042",
                    "features with missing centroids", "malformed centroid version", "feature table version 99")
