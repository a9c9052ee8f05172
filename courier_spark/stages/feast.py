"""`courier feast`: the root's feature tables -> a Feast feature repository
(``courier_spark.serving.feast_repo``): entities, feature views over the Delta tables,
the Spark offline store and the ``online`` section's Redis."""
from __future__ import annotations

import os

from courier_spark.serving.feast_repo import feature_views, offline_spark_conf, repo_files, write_repo
from courier_spark.core.logs import say
from courier_spark.core.tables import read_table, table_exists
from courier_spark.stages.context import StageContext
from courier_spark.stages.results import FeastResult


def run(ctx: StageContext) -> FeastResult:
    """feature_store/* schemas + config -> feast.repo/{feature_store.yaml, courier_features.py}."""
    cfg, spark, p = ctx.cfg, ctx.spark, ctx.paths
    item_visual = read_table(spark, p.item_visual_features)      # missing: the error names `features`
    impression_visual = (read_table(spark, p.impression_visual_features)
                         if table_exists(spark, p.impression_visual_features) else None)
    views = feature_views(p.item_visual_features, item_visual.schema, p.impression_visual_features,
                          impression_visual.schema if impression_visual is not None else None)
    spark_conf, env_vars = offline_spark_conf(cfg.spark, cfg.feast.offline_master)
    # A password only when this process has one: Feast would otherwise send the literal "${VAR}".
    with_password = bool(os.environ.get(cfg.online.password_env))
    if with_password:
        env_vars.append(cfg.online.password_env)
    repo = repo_files(views, project=cfg.feast.project, root=p.root, spark_conf=spark_conf, online=cfg.online,
                      with_password=with_password, env_vars=env_vars)
    directory = os.path.abspath(os.path.expanduser(cfg.feast.repo))
    write_repo(repo, directory, cfg.feast.overwrite)
    names = [v.name for v in views]
    say("feast", f"wrote the Feast repository {directory} (project {cfg.feast.project}; feature views "
                 f"{', '.join(names)}); next: feast -c {directory} apply, then materialize-incremental"
                 + (f"; Feast needs {', '.join(env_vars)} in its environment" if env_vars else ""))
    return FeastResult(repo=directory, project=cfg.feast.project, feature_views=names, env_vars=list(env_vars))
