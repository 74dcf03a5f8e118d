-- Each member's newest training positives, published with the model so the feature store holds
-- the whole history the nearline fold-in needs.
-- Tables: `training`. Parameters: ${history_cap}.
-- Output columns (required of any replacement query): user_id, item_id, strength, last_ts_ms.
SELECT user_id, item_id, strength, last_ts_ms
FROM (
    SELECT user_id, item_id, strength, last_ts_ms,
           ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY last_ts_ms DESC, item_id) AS newest
    FROM training
) ranked
WHERE newest <= ${history_cap}
ORDER BY user_id, last_ts_ms DESC, item_id
