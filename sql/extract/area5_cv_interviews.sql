-- Area 5 (Kapitel 5, § 25): CV interviews held by the municipality, and the CV's approval status.
--
-- One row per interview, soft-deleted ones included; the mapping keeps § 24's groups only
-- (LAB2-2 and IL-LEDIG on the interview date).
-- Derivation inputs beyond the fields:
--   target_group, insured  the person's group and a-kasse membership on held_on
--   reconciles             1 when a benefit spell covers held_on (§ 26)
-- As-of rule: valid_from <= day and (valid_to is null or valid_to >= day); the latest valid_from wins.
-- Change detection (DESIGN.md principle 9; NULL parameters: the full read, as updated_at is never NULL):
--   :since          only interviews that may have changed since this source stamp: the interview's own
--                   change (updated_at or deleted_at >= :since) and every interview of a person with a
--                   change in persons (the CPR number), person_target_groups (target_group, insured, and
--                   so the area's scope) or benefits (reconciles);
--   :recheck_after  and the interviews held after this day (dates.future changes as the period moves).
-- The stamp to pass next time comes from area5_cv_interviews.mark.sql, read before this query.
SELECT
    p.cpr                AS person_cpr,
    c.municipality_code  AS municipality_code,
    c.held_on            AS held_on,
    c.cv_status          AS cv_status,
    (SELECT tg.target_group
       FROM person_target_groups tg
      WHERE tg.person_id = c.person_id AND tg.deleted_at IS NULL
        AND tg.valid_from <= c.held_on AND (tg.valid_to IS NULL OR tg.valid_to >= c.held_on)
      ORDER BY tg.valid_from DESC LIMIT 1) AS target_group,
    (SELECT CASE WHEN tg.insured THEN 1 ELSE 0 END
       FROM person_target_groups tg
      WHERE tg.person_id = c.person_id AND tg.deleted_at IS NULL
        AND tg.valid_from <= c.held_on AND (tg.valid_to IS NULL OR tg.valid_to >= c.held_on)
      ORDER BY tg.valid_from DESC LIMIT 1) AS insured,
    CASE WHEN EXISTS (SELECT 1 FROM benefits b
                       WHERE b.person_id = c.person_id AND b.deleted_at IS NULL
                         AND b.valid_from <= c.held_on AND (b.valid_to IS NULL OR b.valid_to >= c.held_on))
         THEN 1 ELSE 0 END AS reconciles,
    CAST(c.interview_id AS TEXT) AS record_key,
    c.updated_at         AS updated_at,
    c.deleted_at         AS deleted_at
FROM cv_interviews c
LEFT JOIN persons p ON p.person_id = c.person_id
WHERE c.updated_at >= COALESCE(:since, c.updated_at) OR c.deleted_at >= :since
   OR c.person_id IN (
        SELECT x.person_id FROM persons x WHERE x.updated_at >= :since OR x.deleted_at >= :since
        UNION SELECT x.person_id FROM person_target_groups x WHERE x.updated_at >= :since OR x.deleted_at >= :since
        UNION SELECT x.person_id FROM benefits x WHERE x.updated_at >= :since OR x.deleted_at >= :since)
   OR c.held_on > :recheck_after
ORDER BY record_key
