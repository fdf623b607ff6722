-- Area 3 (Kapitel 3, § 14): follow-up interviews with sick-listed persons, held by the municipality.
--
-- One row per interview, soft-deleted ones included. visitation_rules (2005 or 2014) is derived
-- from held_on in Python (transforms.codelists.visitation_rules_version), not here.
-- Derivation input beyond the fields:
--   reconciles  1 when a payment to the person covers held_on (§ 15)
-- Change detection (DESIGN.md principle 9; NULL parameters: the full read, as updated_at is never NULL):
--   :since          only interviews that may have changed since this source stamp: the interview's own
--                   change (updated_at or deleted_at >= :since) and every interview of a person with a
--                   change in persons (the CPR number) or payments (reconciles);
--   :recheck_after  and the interviews held after this day (dates.future changes as the period moves).
-- The stamp to pass next time comes from area3_followup_interviews.mark.sql, read before this query.
SELECT
    p.cpr                  AS person_cpr,
    f.municipality_code    AS municipality_code,
    f.held_on              AS held_on,
    f.interview_form       AS interview_form,
    f.visitation_category  AS visitation_category,
    CASE WHEN EXISTS (SELECT 1 FROM payments pay
                       WHERE pay.person_id = f.person_id AND pay.deleted_at IS NULL
                         AND pay.period_from <= f.held_on AND pay.period_to >= f.held_on)
         THEN 1 ELSE 0 END AS reconciles,
    CAST(f.interview_id AS TEXT) AS record_key,
    f.updated_at           AS updated_at,
    f.deleted_at           AS deleted_at
FROM followup_interviews f
LEFT JOIN persons p ON p.person_id = f.person_id
WHERE f.updated_at >= COALESCE(:since, f.updated_at) OR f.deleted_at >= :since
   OR f.person_id IN (
        SELECT c.person_id FROM persons c WHERE c.updated_at >= :since OR c.deleted_at >= :since
        UNION SELECT c.person_id FROM payments c WHERE c.updated_at >= :since OR c.deleted_at >= :since)
   OR f.held_on > :recheck_after
ORDER BY record_key
