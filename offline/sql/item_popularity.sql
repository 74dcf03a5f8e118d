-- Item popularity for the "Trending now" row and cold-start ranking: distinct members with a
-- positive interaction, and that count scaled to (0, 1] by the most popular item.
-- Tables: `training` (the output of training_table.sql).
-- Output columns (required of any replacement query): item_id, members, score.
WITH counts AS (
    SELECT item_id, COUNT(*) AS members
    FROM training
    GROUP BY item_id
)
SELECT item_id,
       members,
       CAST(members AS DOUBLE) / (SELECT MAX(members) FROM counts) AS score
FROM counts
ORDER BY members DESC, item_id
