-- Area 7 (Kapitel 7, § 37): mentor support, per person or per slot (pr. plads). PostgreSQL version.
--
-- One row per grant, soft-deleted ones included. person_cprs lists the CPR numbers of the grant's
-- persons (live rows of mentor_grant_persons), comma-separated and ordered byte-wise (COLLATE "C",
-- the same order as SQLite's); the mapping splits it.
-- Change detection (DESIGN.md principle 9; NULL parameters: the full read, as updated_at is never NULL):
--   :since          only grants that may have changed since this source stamp: the grant's own change
--                   (updated_at or deleted_at >= :since), every grant with a change in its persons
--                   (mentor_grant_persons: a person added, removed or soft-deleted), and every grant of a
--                   person with a change in persons (the CPR number, so person_cprs);
--   :recheck_after  and the grants starting after this day (dates.future changes as the period moves;
--                   a planned end_date after the period is normal, not checked).
-- The stamp to pass next time comes from area7_mentor_support.mark.sql (one for every dialect), read
-- before this query. Every dialect's file filters the same way.
SELECT
    g.municipality_code  AS municipality_code,
    g.basis              AS basis,
    g.company_cvr        AS company_cvr,
    g.company_pnr        AS company_pnr,
    g.start_date         AS start_date,
    g.end_date           AS end_date,
    g.granted_hours      AS granted_hours,
    g.persons_paid       AS persons_paid,
    g.avg_paid_hours     AS avg_paid_hours,
    l.person_cprs        AS person_cprs,
    CAST(g.grant_id AS TEXT) AS record_key,
    g.updated_at         AS updated_at,
    g.deleted_at         AS deleted_at
FROM mentor_grants g
LEFT JOIN (
    SELECT gp.grant_id AS grant_id,
           string_agg(p.cpr, ',' ORDER BY p.cpr COLLATE "C") AS person_cprs
      FROM mentor_grant_persons gp
      JOIN persons p ON p.person_id = gp.person_id
     WHERE gp.deleted_at IS NULL
     GROUP BY gp.grant_id
) l ON l.grant_id = g.grant_id
WHERE g.updated_at >= COALESCE(:since, g.updated_at) OR g.deleted_at >= :since
   OR g.grant_id IN (
        SELECT c.grant_id FROM mentor_grant_persons c WHERE c.updated_at >= :since OR c.deleted_at >= :since
        UNION SELECT gp.grant_id FROM mentor_grant_persons gp
                JOIN persons c ON c.person_id = gp.person_id
               WHERE c.updated_at >= :since OR c.deleted_at >= :since)
   OR g.start_date > :recheck_after
ORDER BY record_key
