-- The change mark of area5_cv_interviews.sql: the latest stamp (updated_at or deleted_at) in the tables it reads.
-- Read before the extraction; the next incremental read passes it as :since (>=, so a row stamped in
-- the same second as the mark is read again, never missed).
SELECT MAX(t) AS mark FROM (
    SELECT MAX(updated_at) AS t FROM cv_interviews UNION ALL SELECT MAX(deleted_at) FROM cv_interviews
    UNION ALL SELECT MAX(updated_at) FROM persons UNION ALL SELECT MAX(deleted_at) FROM persons
    UNION ALL SELECT MAX(updated_at) FROM person_target_groups UNION ALL SELECT MAX(deleted_at) FROM person_target_groups
    UNION ALL SELECT MAX(updated_at) FROM benefits UNION ALL SELECT MAX(deleted_at) FROM benefits
) x
