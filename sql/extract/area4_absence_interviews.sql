-- Area 4 (Kapitel 4, § 19): sickness-absence interviews held by the employer.
--
-- One row per interview, soft-deleted ones included. The employer reports by CVR or by SE number:
-- exactly one of employer_cvr and employer_se is expected (checked downstream, not filtered here).
-- Change detection (DESIGN.md principle 9; NULL parameters: the full read, as updated_at is never NULL):
--   :since          only interviews that may have changed since this source stamp: the interview's own
--                   change (updated_at or deleted_at >= :since) and every interview of a person with a
--                   change in persons (the CPR number);
--   :recheck_after  and the interviews held after this day (dates.future changes as the period moves).
-- The stamp to pass next time comes from area4_absence_interviews.mark.sql, read before this query.
SELECT
    p.cpr           AS person_cpr,
    a.employer_cvr  AS employer_cvr,
    a.employer_se   AS employer_se,
    a.held_on       AS held_on,
    CAST(a.interview_id AS TEXT) AS record_key,
    a.updated_at    AS updated_at,
    a.deleted_at    AS deleted_at
FROM absence_interviews a
LEFT JOIN persons p ON p.person_id = a.person_id
WHERE a.updated_at >= COALESCE(:since, a.updated_at) OR a.deleted_at >= :since
   OR a.person_id IN (SELECT c.person_id FROM persons c WHERE c.updated_at >= :since OR c.deleted_at >= :since)
   OR a.held_on > :recheck_after
ORDER BY record_key
