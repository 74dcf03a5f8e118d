-- Item popularity for the "Trending now" row and cold-start ranking: distinct members with a
-- positive interaction, and that count scaled to (0, 1] by the most popular item.
-- Tables: `training` (the output of training_table.sql).
-- Output columns (required of any replacement query): item_id, members, score.
SELECT item_id,
       CAST(COUNT(*) AS BIGINT UNSIGNED) AS members,
       CAST(CAST(COUNT(*) AS DOUBLE) / MAX(COUNT(*)) OVER () AS FLOAT) AS score
FROM training
GROUP BY item_id
ORDER BY members DESC, item_id
