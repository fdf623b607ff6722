-- Area 4 (Kapitel 4, § 19): sickness-absence interviews held by the employer.
--
-- One row per interview, soft-deleted ones included. The employer reports by CVR or by SE number:
-- exactly one of employer_cvr and employer_se is expected (checked downstream, not filtered here).
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
ORDER BY record_key
