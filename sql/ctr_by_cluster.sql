-- CTR per COURIER cluster id: impressions, clicks and CTR of the items in each
-- cluster, overall and on the test split, and the CTR relative to the overall
-- CTR. Impressions of items without a cluster (no embedding) form the
-- cluster_id NULL row.
--
-- Inputs: ${root}/silver/ctr_samples (item_id, label, split, ...) and
-- ${root}/feature_store/item_visual (item_id, courier_cluster_id, valid_to).
WITH joined AS (
  SELECT s.item_id, CAST(s.label AS INT) AS label, s.split, v.courier_cluster_id AS cluster_id
  FROM delta.`${root}/silver/ctr_samples` s
  LEFT JOIN delta.`${root}/feature_store/item_visual` v
    ON s.item_id = v.item_id AND v.valid_to IS NULL  -- the current feature row
),
-- the overall CTR as a one-row table (a window over the whole result, OVER (),
-- would move every row into one partition)
overall AS (
  SELECT SUM(label) / COUNT(*) AS ctr FROM joined
)
SELECT cluster_id,
       COUNT(DISTINCT item_id) AS items,
       COUNT(*) AS impressions,
       SUM(label) AS clicks,
       SUM(label) / COUNT(*) AS ctr,
       SUM(CASE WHEN split = 'test' THEN 1 ELSE 0 END) AS test_impressions,
       SUM(CASE WHEN split = 'test' THEN label ELSE 0 END)
         / NULLIF(SUM(CASE WHEN split = 'test' THEN 1 ELSE 0 END), 0) AS test_ctr,
       (SUM(label) / COUNT(*)) / NULLIF(MAX(overall.ctr), 0) AS ctr_vs_overall
FROM joined CROSS JOIN overall
GROUP BY cluster_id
ORDER BY impressions DESC, cluster_id
