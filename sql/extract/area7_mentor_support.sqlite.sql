-- Area 7 (Kapitel 7, § 37): mentor support, per person or per slot (pr. plads). SQLite version.
--
-- One row per grant, soft-deleted ones included. person_cprs lists the CPR numbers of the grant's
-- persons (live rows of mentor_grant_persons), comma-separated and ordered; the mapping splits it.
-- group_concat takes its input order from the ordered subquery (SQLite does not flatten an ordered
-- subquery into an aggregate, so the order holds; 3.44's ORDER BY inside aggregates is not needed).
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
    SELECT o.grant_id AS grant_id, group_concat(o.cpr, ',') AS person_cprs
      FROM (SELECT gp.grant_id AS grant_id, p.cpr AS cpr
              FROM mentor_grant_persons gp
              JOIN persons p ON p.person_id = gp.person_id
             WHERE gp.deleted_at IS NULL
             ORDER BY gp.grant_id, p.cpr) o
     GROUP BY o.grant_id
) l ON l.grant_id = g.grant_id
ORDER BY record_key
