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
-- SQLite's version of measures.sql (which is set-based, for PostgreSQL), in three statements on one
-- connection and in one savepoint (transforms.source runs the first two, then streams the third, then
-- rolls the savepoint back, which drops the temporary table).
--
-- 1. The derived columns of the selected measures, computed in *person* order and kept in a temporary
--    table keyed by record_key (~61 bytes a measure: 61 MB at 1M, in SQLite's temporary file).
--    SQLite joins by nested loops only, so each derived column is an index look-up per measure. In
--    person order consecutive look-ups land on the same index pages, already in the cache; in record_key
--    order each is a search of the whole index, and at 1M records those searches grew faster than the
--    rows (issue 9: 12-13x for 9.9x the rows). A full read takes the measures from
--    ix_measures_person_type, which holds every column the look-ups need and is in person order: no
--    table read, no sort before the look-ups. (Sorting the measures by person and fetching each row by
--    rowid for its look-ups, tried before, was no faster: the row fetches became the searches.) A read
--    of changes takes the selected rows (the change filter below, few rows) by rowid.
--    At 1M, CPU in sqlite3 alone: ~6 s for this step and ~7.5 s for the read, against ~24.6 s for the
--    one-statement query this replaced.
-- 2. The rows: the temporary table in record_key order, each measure's row by rowid and its job plan.
--
-- The subqueries are the as-of rules above as written before; tests/test_extract_equivalence.py
-- compares this file with the query it replaced.
CREATE TEMP TABLE ams_measures_derived (
    record_key           TEXT PRIMARY KEY,
    measure_row          INTEGER NOT NULL,
    person_cpr           TEXT,
    main_benefit         TEXT,
    target_group         TEXT,
    insured              INTEGER,
    target_group_at_end  TEXT,
    insured_at_end       INTEGER,
    reconciles           INTEGER,
    overlaps_with        TEXT
) WITHOUT ROWID;

INSERT INTO ams_measures_derived
WITH changed AS MATERIALIZED (  -- a read of changes (:since given): the selected measures, few rows
    SELECT m.person_id, m.measure_type, m.start_date, m.end_date, m.deleted_at, m.measure_id, m.rowid AS measure_row
      FROM measures m
      LEFT JOIN jobplans j ON j.jobplan_id = m.jobplan_id AND j.deleted_at IS NULL
     WHERE :since IS NOT NULL AND (
           m.updated_at >= :since
        OR m.person_id IN (
             SELECT c.person_id FROM persons c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM person_target_groups c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM benefits c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM payments c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM jobplans c WHERE c.updated_at >= :since OR c.deleted_at >= :since
             UNION SELECT c.person_id FROM measures c WHERE c.updated_at >= :since OR c.deleted_at >= :since)
        OR m.jobplan_id IN (SELECT c.jobplan_id FROM jobplans c WHERE c.updated_at >= :since OR c.deleted_at >= :since)
        OR m.start_date > :recheck_after OR j.created_on > :recheck_after OR j.revised_on > :recheck_after)
),
selected AS (  -- every measure (the full read, :since NULL) from the covering index, or the changed ones
    SELECT * FROM (
        SELECT person_id, measure_type, start_date, end_date, deleted_at, measure_id, rowid AS measure_row
          FROM measures WHERE :since IS NULL ORDER BY person_id)
    UNION ALL
    SELECT * FROM changed
)
SELECT
    CAST(m.measure_id AS TEXT) AS record_key,
    m.measure_row,
    p.cpr AS person_cpr,
    (SELECT b.benefit_code
       FROM benefits b
      WHERE b.person_id = m.person_id AND b.deleted_at IS NULL
        AND b.valid_from <= m.start_date AND (b.valid_to IS NULL OR b.valid_to >= m.start_date)
      ORDER BY b.valid_from DESC LIMIT 1) AS main_benefit,
    (SELECT tg.target_group
       FROM person_target_groups tg
      WHERE tg.person_id = m.person_id AND tg.deleted_at IS NULL
        AND tg.valid_from <= m.start_date AND (tg.valid_to IS NULL OR tg.valid_to >= m.start_date)
      ORDER BY tg.valid_from DESC LIMIT 1) AS target_group,
    (SELECT CASE WHEN tg.insured THEN 1 ELSE 0 END
       FROM person_target_groups tg
      WHERE tg.person_id = m.person_id AND tg.deleted_at IS NULL
        AND tg.valid_from <= m.start_date AND (tg.valid_to IS NULL OR tg.valid_to >= m.start_date)
      ORDER BY tg.valid_from DESC LIMIT 1) AS insured,
    (SELECT tg.target_group
       FROM person_target_groups tg
      WHERE tg.person_id = m.person_id AND tg.deleted_at IS NULL
        AND tg.valid_from <= m.end_date AND (tg.valid_to IS NULL OR tg.valid_to >= m.end_date)
      ORDER BY tg.valid_from DESC LIMIT 1) AS target_group_at_end,
    (SELECT CASE WHEN tg.insured THEN 1 ELSE 0 END
       FROM person_target_groups tg
      WHERE tg.person_id = m.person_id AND tg.deleted_at IS NULL
        AND tg.valid_from <= m.end_date AND (tg.valid_to IS NULL OR tg.valid_to >= m.end_date)
      ORDER BY tg.valid_from DESC LIMIT 1) AS insured_at_end,
    CASE WHEN EXISTS (SELECT 1 FROM benefits b
                       WHERE b.person_id = m.person_id AND b.deleted_at IS NULL
                         AND (m.end_date IS NULL OR b.valid_from <= m.end_date)
                         AND (b.valid_to IS NULL OR b.valid_to >= m.start_date))
           OR EXISTS (SELECT 1 FROM payments pay
                       WHERE pay.person_id = m.person_id AND pay.deleted_at IS NULL
                         AND (m.end_date IS NULL OR pay.period_from <= m.end_date)
                         AND pay.period_to >= m.start_date)
         THEN 1 ELSE 0 END AS reconciles,
    (SELECT CAST(MIN(m2.measure_id) AS TEXT)
       FROM measures m2
      WHERE m2.person_id = m.person_id AND m2.measure_type = m.measure_type
        AND m2.measure_id <> m.measure_id AND m2.deleted_at IS NULL
        AND m2.start_date <= m.end_date AND m.start_date <= m2.end_date) AS overlaps_with
FROM selected m
LEFT JOIN persons p ON p.person_id = m.person_id
ORDER BY record_key;  -- written in key order: appended, not inserted at random

SELECT
    d.person_cpr             AS person_cpr,
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
    d.main_benefit           AS main_benefit,
    m.open_offer             AS open_offer,
    m.location_code          AS location_code,
    m.worksite_address       AS worksite_address,
    d.target_group           AS target_group,
    d.insured                AS insured,
    d.target_group_at_end    AS target_group_at_end,
    d.insured_at_end         AS insured_at_end,
    d.reconciles             AS reconciles,
    d.overlaps_with          AS overlaps_with,
    d.record_key             AS record_key,
    m.updated_at             AS updated_at,
    m.deleted_at             AS deleted_at
FROM ams_measures_derived d
CROSS JOIN measures m ON m.rowid = d.measure_row
LEFT JOIN jobplans j ON j.jobplan_id = m.jobplan_id AND j.deleted_at IS NULL
ORDER BY d.record_key  -- the table's own order: no sort
