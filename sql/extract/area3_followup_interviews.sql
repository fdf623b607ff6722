-- Area 3 (Kapitel 3, § 14): follow-up interviews with sick-listed persons, held by the municipality.
--
-- One row per interview, soft-deleted ones included. visitation_rules (2005 or 2014) is derived
-- from held_on in Python (transforms.codelists.visitation_rules_version), not here.
-- Derivation input beyond the fields:
--   reconciles  1 when a payment to the person covers held_on (§ 15)
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
ORDER BY record_key
