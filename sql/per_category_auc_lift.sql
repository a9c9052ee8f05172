-- Per-category AUC of every variant (per model kind) and its lift over the
-- 'baseline' variant, computed from ranks in SQL (Mann-Whitney U):
--   AUC = (sum of the positives' ranks - P(P+1)/2) / (P * N)
-- with ranks ascending by score and tied scores sharing their average rank
-- (rank of the first tie + (tie count - 1) / 2), which equals sklearn's
-- roc_auc_score. Categories without both a click and a non-click get AUC NULL.
-- lift_auc_pct = 100 * (auc / baseline_auc - 1). seen: the variant's encoder
-- was pre-trained on this category's page views (its model's train.categories;
-- null for the baseline), so lift on unseen categories is transfer.
--
-- Input: ${root}/gold/predictions (variant, model_kind, event_id, request_id,
-- session_id, category, seen, label, score). Run with
--   courier_spark.evaluate.sql_runner.run_sql_file(spark, this_file, root)
-- or in spark-sql after `SET root=/path/to/dataset;`.
WITH scored AS (
  SELECT variant, model_kind, category, seen, CAST(label AS INT) AS label, CAST(score AS DOUBLE) AS score
  FROM delta.`${root}/gold/predictions`
  WHERE label IS NOT NULL AND score IS NOT NULL AND NOT isnan(score)
),
ranked AS (
  SELECT variant, model_kind, category, seen, label,
         CAST(RANK() OVER (PARTITION BY variant, model_kind, category ORDER BY score) AS DOUBLE)
           + (COUNT(*) OVER (PARTITION BY variant, model_kind, category, score) - 1) / 2.0D AS avg_rank
  FROM scored
),
per_category AS (
  SELECT variant, model_kind, category,
         BOOL_OR(seen) AS seen,
         COUNT(*) AS impressions,
         SUM(label) AS clicks,
         COUNT(*) - SUM(label) AS non_clicks,
         SUM(CASE WHEN label = 1 THEN avg_rank ELSE 0.0D END) AS pos_rank_sum
  FROM ranked
  GROUP BY variant, model_kind, category
),
auc AS (
  SELECT variant, model_kind, category, seen, impressions, clicks,
         CASE WHEN clicks > 0 AND non_clicks > 0
              THEN (pos_rank_sum - CAST(clicks AS DOUBLE) * (clicks + 1) / 2.0D)
                   / (CAST(clicks AS DOUBLE) * non_clicks)
         END AS auc
  FROM per_category
),
with_baseline AS (
  -- The baseline's AUC of the same model kind and category, via a window
  -- (no self-join, so the ranks are computed once).
  SELECT *, MAX(CASE WHEN variant = 'baseline' THEN auc END)
              OVER (PARTITION BY model_kind, category) AS baseline_auc
  FROM auc
)
SELECT model_kind,
       variant,
       category,
       seen,
       impressions,
       clicks,
       auc,
       baseline_auc,
       100.0D * (auc / baseline_auc - 1.0D) AS lift_auc_pct
FROM with_baseline
ORDER BY model_kind, category, variant
