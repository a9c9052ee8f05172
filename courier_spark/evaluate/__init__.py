"""Evaluation layer: CTR models on COURIER image features, metrics, SQL, report.

Modules (torch / LightGBM / Spark are imported only by the modules that need them):

* ``frames``     - the CTR-frame contract and ``make_toy_ctr_frames``
* ``metrics``    - ``auc``, ``gauc``, ``per_category_auc``, ``summarize_seeds``, ``is_real_difference``
* ``ctr_dnn``    - ``train_dnn`` / ``score_dnn`` (main model)
* ``lgbm``       - ``train_lgbm`` / ``score_lgbm`` (screen)
* ``runner``     - ``evaluate_variants``, ``write_metrics_json``
* ``sql_runner`` - ``run_sql_file`` for ``sql/*.sql``, ``write_predictions``
* ``report``     - ``write_report``

Its settings are the ``evaluate`` section of ``courier_spark.core.schema``
(``EvaluateConfig``, ``DnnConfig``, ``LgbmConfig``).
"""
