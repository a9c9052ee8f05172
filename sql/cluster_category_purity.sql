-- Category purity of each COURIER cluster: the share of the cluster's items
-- that belong to its most common category (1.0 = one category only). A
-- behaviour-trained embedding should mix categories more than a category
-- classifier would, but far less than random clusters (purity ~ 1/#categories
-- for uniform categories). overall_purity = item-weighted mean over clusters.
--
-- Inputs: ${root}/feature_store/item_visual (item_id, courier_cluster_id, valid_to) and
-- ${root}/silver/items (item_id, category).
WITH items AS (
  SELECT v.item_id, v.courier_cluster_id AS cluster_id, i.category
  FROM delta.`${root}/feature_store/item_visual` v
  JOIN delta.`${root}/silver/items` i
    ON v.item_id = i.item_id
  WHERE v.courier_cluster_id IS NOT NULL
    AND v.valid_to IS NULL  -- the current feature row (item_visual keeps history)
),
counts AS (
  SELECT cluster_id, category, COUNT(DISTINCT item_id) AS n
  FROM items
  GROUP BY cluster_id, category
),
ranked AS (
  SELECT cluster_id, category, n,
         SUM(n) OVER (PARTITION BY cluster_id) AS cluster_items,
         COUNT(*) OVER (PARTITION BY cluster_id) AS n_categories,
         ROW_NUMBER() OVER (PARTITION BY cluster_id ORDER BY n DESC, category) AS rk
  FROM counts
),
top AS (
  SELECT * FROM ranked WHERE rk = 1
),
-- item-weighted mean purity as a one-row table (OVER () would put every row
-- into one partition)
overall AS (
  SELECT SUM(n) / SUM(cluster_items) AS purity FROM top
)
SELECT cluster_id,
       cluster_items AS items,
       n_categories,
       category AS top_category,
       n AS top_category_items,
       n / cluster_items AS purity,
       overall.purity AS overall_purity
FROM top CROSS JOIN overall
ORDER BY items DESC, cluster_id
