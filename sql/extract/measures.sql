-- Areas 1 and 2 (Kapitel 1, § 3 and Kapitel 2, § 9): every measure, with the fields of both areas.
--
-- One query for both areas: a measure belongs to area 1 or 2 by the person's target group and a-kasse
-- membership on its start date (§ 2, § 8, reference/target_groups.csv), which the mapping decides;
-- each area keeps only its own fields, so the payload carries nothing the other area's paragraph asks.
-- One row per measure, soft-deleted ones included (the pipeline annuls what was delivered).
-- Derivation inputs beyond the fields:
--   main_benefit (a field, § 9 nr. 7)   the benefit spell valid on start_date; NULL when none:
--                                       the mapping records self-supporting as code 99
--   target_group, insured              the person's group and a-kasse membership on start_date
--   target_group_at_end, insured_at_end the same on end_date (status changes during the measure)
--   reconciles                          1 when a benefit spell or a payment overlaps the measure (§§ 4, 10)
--   overlaps_with                       another live measure of the same person and type that overlaps
--                                       this one (measure.overlap), across the whole table, not a chunk
-- As-of rule: valid_from <= day and (valid_to is null or valid_to >= day); the latest valid_from wins.
-- Change detection (DESIGN.md principle 9; NULL parameters: the full read, as updated_at is never NULL):
--   :since          only measures that may have changed since this source stamp: every measure of a
--                   person with a change (stamped updated_at or deleted_at >= :since) in any table this
--                   query reads (a target group, benefit, payment, job plan or another measure of the
--                   person changes the derived columns), and every measure of a changed job plan;
--   :recheck_after  and the measures with a date after this day, for the rules that depend on the
--                   reporting period's end (dates.future): their outcome changes as the period moves.
-- The stamp to pass next time comes from measures.mark.sql, read before this query.
--
-- Set-based (issue 9): each derived column is one join of the selected measures (sel) with its table,
-- reduced to one row per measure (the latest valid_from by ROW_NUMBER, the first overlapping measure by
-- MIN, a reconciling spell or payment by EXISTS), then joined back by measure_id; not a correlated
-- subquery per measure and column, which cost eight random index lookups per measure and grew faster
-- than the table (14.9x from 100k to 1M on SQLite). The predicates are the as-of rules above, written
-- as before, so NULL dates give what they gave (tests/test_extract_equivalence.py compares the two).
WITH changed AS (
    -- The change read's measures, one branch per reason, each an index look-up on its stamp or date; not ORs in
    -- one WHERE, whose size PostgreSQL cannot estimate (it took ~77 % of the table and hashed whole tables).
    -- Nothing when :since is NULL (a comparison with NULL is never true) but for the :recheck_after branches,
    -- which sel ignores then.
    SELECT m.measure_id FROM measures m WHERE m.updated_at >= :since OR m.deleted_at >= :since
    UNION SELECT m.measure_id FROM measures m JOIN (
             SELECT c.person_id FROM persons c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM person_target_groups c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM benefits c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM payments c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM jobplans c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM measures c WHERE c.updated_at >= :since OR c.deleted_at >= :since
           ) p ON p.person_id = m.person_id
    UNION SELECT m.measure_id FROM measures m JOIN jobplans c ON c.jobplan_id = m.jobplan_id
           WHERE c.updated_at >= :since OR c.deleted_at >= :since
    UNION SELECT m.measure_id FROM measures m WHERE m.start_date > :recheck_after
    UNION SELECT m.measure_id FROM measures m JOIN jobplans j ON j.jobplan_id = m.jobplan_id AND j.deleted_at IS NULL
           WHERE j.created_on > :recheck_after OR j.revised_on > :recheck_after
),
sel AS (
    -- the full read (:since NULL) or the changed measures; PostgreSQL plans with the parameters' values, so
    -- the branch that does not apply is dropped before it runs
    SELECT m.measure_id, m.person_id, m.measure_type, m.start_date, m.end_date
      FROM measures m
     WHERE :since IS NULL
    UNION ALL
    SELECT m.measure_id, m.person_id, m.measure_type, m.start_date, m.end_date
      FROM measures m
      JOIN changed c ON c.measure_id = m.measure_id
     WHERE :since IS NOT NULL
),
benefit_at_start AS (
    SELECT measure_id, benefit_code FROM (
        SELECT s.measure_id, b.benefit_code,
               ROW_NUMBER() OVER (PARTITION BY s.measure_id ORDER BY b.valid_from DESC) AS n
          FROM sel s
          JOIN benefits b
            ON b.person_id = s.person_id AND b.deleted_at IS NULL
           AND b.valid_from <= s.start_date AND (b.valid_to IS NULL OR b.valid_to >= s.start_date)
    ) x WHERE n = 1
),
group_at_start AS (
    SELECT measure_id, target_group, insured FROM (
        SELECT s.measure_id, tg.target_group, CASE WHEN tg.insured THEN 1 ELSE 0 END AS insured,
               ROW_NUMBER() OVER (PARTITION BY s.measure_id ORDER BY tg.valid_from DESC) AS n
          FROM sel s
          JOIN person_target_groups tg
            ON tg.person_id = s.person_id AND tg.deleted_at IS NULL
           AND tg.valid_from <= s.start_date AND (tg.valid_to IS NULL OR tg.valid_to >= s.start_date)
    ) x WHERE n = 1
),
group_at_end AS (
    SELECT measure_id, target_group, insured FROM (
        SELECT s.measure_id, tg.target_group, CASE WHEN tg.insured THEN 1 ELSE 0 END AS insured,
               ROW_NUMBER() OVER (PARTITION BY s.measure_id ORDER BY tg.valid_from DESC) AS n
          FROM sel s
          JOIN person_target_groups tg
            ON tg.person_id = s.person_id AND tg.deleted_at IS NULL
           AND tg.valid_from <= s.end_date AND (tg.valid_to IS NULL OR tg.valid_to >= s.end_date)
    ) x WHERE n = 1
),
reconciling AS (
    SELECT s.measure_id FROM sel s
     WHERE EXISTS (SELECT 1 FROM benefits b
                    WHERE b.person_id = s.person_id AND b.deleted_at IS NULL
                      AND (s.end_date IS NULL OR b.valid_from <= s.end_date)
                      AND (b.valid_to IS NULL OR b.valid_to >= s.start_date))
    UNION
    SELECT s.measure_id FROM sel s
     WHERE EXISTS (SELECT 1 FROM payments pay
                    WHERE pay.person_id = s.person_id AND pay.deleted_at IS NULL
                      AND (s.end_date IS NULL OR pay.period_from <= s.end_date)
                      AND pay.period_to >= s.start_date)
),
overlapping AS (
    SELECT s.measure_id, CAST(MIN(m2.measure_id) AS TEXT) AS other
      FROM sel s
      JOIN measures m2
        ON m2.person_id = s.person_id AND m2.measure_type = s.measure_type
       AND m2.measure_id <> s.measure_id AND m2.deleted_at IS NULL
       AND m2.start_date <= s.end_date AND s.start_date <= m2.end_date
     GROUP BY s.measure_id
)
SELECT
    p.cpr                    AS person_cpr,
    m.municipality_code      AS municipality_code,
    m.responsible_jobcenter  AS responsible_jobcentre,
    m.registering_jobcenter  AS registering_jobcentre,
    m.measure_id             AS measure_id,
    m.measure_type           AS measure_type,
    m.start_date             AS start_date,
    m.end_date               AS end_date,
    m.weekly_hours           AS weekly_hours,
    m.activation_type        AS activation_type,
    m.jobplan_id             AS jobplan_id,
    j.created_on             AS jobplan_created_on,
    j.revised_on             AS jobplan_revised_on,
    j.employment_goal        AS employment_goal,
    m.job_order_id           AS job_order_id,
    m.job_order_type         AS job_order_type,
    m.provider_cvr           AS provider_cvr,
    m.provider_pnr           AS provider_pnr,
    m.ministry_area          AS ministry_area,
    m.job_title              AS job_title,
    m.course_type            AS course_type,
    m.team_id                AS team_id,
    bs.benefit_code          AS main_benefit,
    m.open_offer             AS open_offer,
    m.location_code          AS location_code,
    m.worksite_address       AS worksite_address,
    gs.target_group          AS target_group,
    gs.insured               AS insured,
    ge.target_group          AS target_group_at_end,
    ge.insured               AS insured_at_end,
    CASE WHEN r.measure_id IS NULL THEN 0 ELSE 1 END AS reconciles,
    o.other                  AS overlaps_with,
    CAST(m.measure_id AS TEXT) AS record_key,
    m.updated_at             AS updated_at,
    m.deleted_at             AS deleted_at
FROM sel s
JOIN measures m ON m.measure_id = s.measure_id
LEFT JOIN persons p ON p.person_id = m.person_id
LEFT JOIN jobplans j ON j.jobplan_id = m.jobplan_id AND j.deleted_at IS NULL
LEFT JOIN benefit_at_start bs ON bs.measure_id = s.measure_id
LEFT JOIN group_at_start gs ON gs.measure_id = s.measure_id
LEFT JOIN group_at_end ge ON ge.measure_id = s.measure_id
LEFT JOIN reconciling r ON r.measure_id = s.measure_id
LEFT JOIN overlapping o ON o.measure_id = s.measure_id
ORDER BY record_key
