-- The training table: one row per (member, item) with the interaction strength r > 0 that ALS
-- turns into confidence 1 + alpha * r.
--
-- Tables: `interactions` (the input), `event_weights(event_type, weight)` (from the config),
-- `forgetting_events(event_type)` (explicit negatives that forget the member's earlier events on
-- the item, as the nearline fold-in does: nearline.feedback with negative_fold_in = "forget";
-- empty otherwise), `items(item_id, ...)` (the catalog; items outside it cannot be recommended,
-- so they are dropped).
-- Parameters, substituted before the query runs: ${as_of_ms}, ${reference_ms}, ${half_life_ms}
-- (0 = no decay), ${rating_event_type}, ${rating_threshold}, ${min_user_interactions},
-- ${min_item_interactions}.
-- Output columns (required of any replacement query): user_id, item_id, strength, last_ts_ms.
WITH events AS (
    -- De-duplication: the same event logged twice (at-least-once logging) counts once.
    SELECT DISTINCT i.user_id, i.item_id, i.event_type, i.value, CAST(i.ts AS BIGINT) AS ts_ms
    FROM interactions i
    -- Point in time: nothing after --as-of exists for this model.
    WHERE CAST(i.ts AS BIGINT) <= ${as_of_ms}
      AND i.item_id IN (SELECT item_id FROM items)
),
forgotten AS (
    -- A member's newest explicit negative on an item: their events on it up to then are gone.
    SELECT e.user_id, e.item_id, MAX(e.ts_ms) AS until_ms
    FROM events e
    JOIN forgetting_events f ON e.event_type = f.event_type
    GROUP BY e.user_id, e.item_id
),
scored AS (
    SELECT e.user_id, e.item_id, e.ts_ms,
           CASE
               WHEN e.event_type = ${rating_event_type} THEN
                   CASE WHEN e.value >= ${rating_threshold} THEN w.weight ELSE 0.0 END
               ELSE w.weight
           END
           * CASE
                 WHEN ${half_life_ms} > 0
                 THEN power(0.5, CAST(${reference_ms} - e.ts_ms AS DOUBLE) / ${half_life_ms})
                 ELSE 1.0
             END AS strength
    FROM events e
    JOIN event_weights w ON e.event_type = w.event_type
    LEFT JOIN forgotten f ON e.user_id = f.user_id AND e.item_id = f.item_id
    WHERE f.until_ms IS NULL OR e.ts_ms > f.until_ms
),
pairs AS (
    SELECT user_id, item_id, SUM(strength) AS strength, MAX(ts_ms) AS last_ts_ms
    FROM scored
    WHERE strength > 0
    GROUP BY user_id, item_id
),
active_members AS (
    SELECT user_id FROM pairs GROUP BY user_id HAVING COUNT(*) >= ${min_user_interactions}
),
active_items AS (
    SELECT item_id FROM pairs GROUP BY item_id HAVING COUNT(*) >= ${min_item_interactions}
)
SELECT p.user_id, p.item_id, p.strength, p.last_ts_ms
FROM pairs p
WHERE p.user_id IN (SELECT user_id FROM active_members)
  AND p.item_id IN (SELECT item_id FROM active_items)
