-- Area 6 (Kapitel 6, § 31): subsidy for personal assistance to persons with disabilities.
--
-- One row per grant, soft-deleted ones included.
-- Derivation input beyond the fields:
--   reconciles  1 when a payment to the person overlaps the grant period (§ 32)
-- Change detection (DESIGN.md principle 9; NULL parameters: the full read, as updated_at is never NULL):
--   :since          only grants that may have changed since this source stamp: the grant's own change
--                   (updated_at or deleted_at >= :since) and every grant of a person with a change in
--                   persons (the CPR number) or payments (reconciles);
--   :recheck_after  and the grants starting after this day (dates.future changes as the period moves;
--                   a planned end_date after the period is normal, not checked).
-- The stamp to pass next time comes from area6_personal_assistance.mark.sql, read before this query.
SELECT
    p.cpr                AS person_cpr,
    g.municipality_code  AS municipality_code,
    g.scheme             AS scheme,
    g.company_cvr        AS company_cvr,
    g.company_pnr        AS company_pnr,
    g.start_date         AS start_date,
    g.end_date           AS end_date,
    g.weekly_hours       AS weekly_hours,
    CASE WHEN EXISTS (SELECT 1 FROM payments pay
                       WHERE pay.person_id = g.person_id AND pay.deleted_at IS NULL
                         AND (g.end_date IS NULL OR pay.period_from <= g.end_date)
                         AND pay.period_to >= g.start_date)
         THEN 1 ELSE 0 END AS reconciles,
    CAST(g.grant_id AS TEXT) AS record_key,
    g.updated_at         AS updated_at,
    g.deleted_at         AS deleted_at
FROM personal_assistance_grants g
LEFT JOIN persons p ON p.person_id = g.person_id
WHERE g.updated_at >= COALESCE(:since, g.updated_at) OR g.deleted_at >= :since
   OR g.person_id IN (
        SELECT c.person_id FROM persons c WHERE c.updated_at >= :since OR c.deleted_at >= :since
        UNION SELECT c.person_id FROM payments c WHERE c.updated_at >= :since OR c.deleted_at >= :since)
   OR g.start_date > :recheck_after
ORDER BY record_key
