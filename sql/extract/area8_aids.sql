-- Area 8 (Kapitel 8, § 42, stk. 2): aids (teaching material; work tools and minor adaptations).
--
-- One row per grant, soft-deleted ones included. company_cvr and company_pnr come as they are:
-- they are filled where the company receives the subsidy.
-- Change detection (DESIGN.md principle 9; NULL parameters: the full read, as updated_at is never NULL):
--   :since          only grants that may have changed since this source stamp: the grant's own change
--                   (updated_at or deleted_at >= :since) and every grant of a person with a change in
--                   persons (the CPR number);
--   :recheck_after  and the grants approved after this day (dates.future changes as the period moves).
-- The stamp to pass next time comes from area8_aids.mark.sql, read before this query.
SELECT
    g.municipality_code  AS municipality_code,
    g.aid_kind           AS aid_kind,
    g.company_cvr        AS company_cvr,
    g.company_pnr        AS company_pnr,
    g.approved_on        AS approved_on,
    p.cpr                AS person_cpr,
    CAST(g.grant_id AS TEXT) AS record_key,
    g.updated_at         AS updated_at,
    g.deleted_at         AS deleted_at
FROM aid_grants g
LEFT JOIN persons p ON p.person_id = g.person_id
WHERE g.updated_at >= COALESCE(:since, g.updated_at) OR g.deleted_at >= :since
   OR g.person_id IN (SELECT c.person_id FROM persons c WHERE c.updated_at >= :since OR c.deleted_at >= :since)
   OR g.approved_on > :recheck_after
ORDER BY record_key
