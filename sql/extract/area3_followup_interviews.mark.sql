-- The change mark of area3_followup_interviews.sql: the latest stamp (updated_at or deleted_at) in the tables it reads.
-- Read before the extraction; the next incremental read passes it as :since (>=, so a row stamped in
-- the same second as the mark is read again, never missed).
SELECT MAX(t) AS mark FROM (
    SELECT MAX(updated_at) AS t FROM followup_interviews UNION ALL SELECT MAX(deleted_at) FROM followup_interviews
    UNION ALL SELECT MAX(updated_at) FROM persons UNION ALL SELECT MAX(deleted_at) FROM persons
    UNION ALL SELECT MAX(updated_at) FROM payments UNION ALL SELECT MAX(deleted_at) FROM payments
) x
