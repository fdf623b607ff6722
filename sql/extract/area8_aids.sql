-- Area 8 (Kapitel 8, § 42, stk. 2): aids (teaching material; work tools and minor adaptations).
--
-- One row per grant, soft-deleted ones included. company_cvr and company_pnr come as they are:
-- they are filled where the company receives the subsidy.
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
ORDER BY record_key
