-- The source contract (DESIGN.md, "The source contract") as SQLite tables: the embedded demo.
--
-- A municipality provides the same tables (or views of the same shape) over its case system.
-- Types: identifiers (CPR, CVR, P- and SE numbers, municipality and job-centre codes, keys) are
-- TEXT, never INTEGER or NUMERIC, because integer affinity drops leading zeros (0101901234).
-- Dates are ISO-8601 TEXT (YYYY-MM-DD); timestamps are TEXT 'YYYY-MM-DD HH:MM:SS' in UTC.
-- Every table has updated_at and a soft-delete deleted_at (NULL while the row is live).
-- No foreign keys: the contract is read, not enforced; the extraction queries use outer joins.
-- Re-runnable: CREATE ... IF NOT EXISTS throughout.

CREATE TABLE IF NOT EXISTS persons (
    person_id   INTEGER PRIMARY KEY,
    cpr         TEXT NOT NULL,
    updated_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at  TEXT
);
CREATE INDEX IF NOT EXISTS ix_persons_cpr ON persons (cpr);

-- LAB § 2 group or integration-act group, and a-kasse membership, valid from .. to (NULL: open).
CREATE TABLE IF NOT EXISTS person_target_groups (
    person_id     INTEGER NOT NULL,
    valid_from    TEXT NOT NULL,
    valid_to      TEXT,
    target_group  TEXT NOT NULL,
    insured       INTEGER NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at    TEXT,
    PRIMARY KEY (person_id, valid_from)
);
-- The as-of lookups (the group on a measure's start and end date): every column they read is in the
-- index, so a lookup never reads the table (issue 9: at 1M records each table read was a cache miss).
CREATE INDEX IF NOT EXISTS ix_target_groups_asof ON person_target_groups (person_id, valid_from, valid_to, deleted_at, target_group, insured);

-- Main benefit (hovedydelse) spells. No row on a date: self-supporting.
CREATE TABLE IF NOT EXISTS benefits (
    person_id     INTEGER NOT NULL,
    valid_from    TEXT NOT NULL,
    valid_to      TEXT,
    benefit_code  TEXT NOT NULL,
    updated_at    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at    TEXT,
    PRIMARY KEY (person_id, valid_from)
);
CREATE INDEX IF NOT EXISTS ix_benefits_asof ON benefits (person_id, valid_from, valid_to, deleted_at, benefit_code);

-- Payments of benefits and subsidies; benefit_code NULL for payments outside the benefit list.
CREATE TABLE IF NOT EXISTS payments (
    payment_id    INTEGER PRIMARY KEY,
    person_id     INTEGER NOT NULL,
    benefit_code  TEXT,
    period_from   TEXT NOT NULL,
    period_to     TEXT NOT NULL,
    amount        REAL,
    updated_at    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at    TEXT
);
CREATE INDEX IF NOT EXISTS ix_payments_person_live ON payments (person_id, period_from, period_to, deleted_at);

CREATE TABLE IF NOT EXISTS jobplans (
    jobplan_id       TEXT PRIMARY KEY,
    person_id        INTEGER NOT NULL,
    created_on       TEXT,
    revised_on       TEXT,
    employment_goal  TEXT,
    updated_at       TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at       TEXT
);
CREATE INDEX IF NOT EXISTS ix_jobplans_person ON jobplans (person_id);

-- Areas 1 and 2 (§ 3, § 9): one row per measure; the area follows from the target group.
CREATE TABLE IF NOT EXISTS measures (
    measure_id             TEXT PRIMARY KEY,
    person_id              INTEGER NOT NULL,
    municipality_code      TEXT,
    responsible_jobcenter  TEXT,
    registering_jobcenter  TEXT,
    measure_type           TEXT,
    activation_type        TEXT,
    start_date             TEXT,
    end_date               TEXT,
    weekly_hours           REAL,
    open_offer             INTEGER,
    jobplan_id             TEXT,
    job_order_id           TEXT,
    job_order_type         TEXT,
    provider_cvr           TEXT,
    provider_pnr           TEXT,
    ministry_area          TEXT,
    job_title              TEXT,
    course_type            TEXT,
    team_id                TEXT,
    location_code          TEXT,
    worksite_address       TEXT,
    updated_at             TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at             TEXT
);
CREATE INDEX IF NOT EXISTS ix_measures_person_start ON measures (person_id, start_date);
-- overlaps_with (another live measure of the person and type over the same days), read from the index alone
CREATE INDEX IF NOT EXISTS ix_measures_person_type ON measures (person_id, measure_type, start_date, end_date, deleted_at, measure_id);
CREATE INDEX IF NOT EXISTS ix_measures_jobplan ON measures (jobplan_id);
CREATE INDEX IF NOT EXISTS ix_measures_updated ON measures (updated_at);

-- Area 3 (§ 14).
CREATE TABLE IF NOT EXISTS followup_interviews (
    interview_id         TEXT PRIMARY KEY,
    person_id            INTEGER NOT NULL,
    municipality_code    TEXT,
    held_on              TEXT,
    interview_form       TEXT,
    visitation_category  TEXT,
    updated_at           TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at           TEXT
);
CREATE INDEX IF NOT EXISTS ix_followup_person_held ON followup_interviews (person_id, held_on);
CREATE INDEX IF NOT EXISTS ix_followup_updated ON followup_interviews (updated_at);

-- Area 4 (§ 19): the employer reports by CVR or by SE number.
CREATE TABLE IF NOT EXISTS absence_interviews (
    interview_id       TEXT PRIMARY KEY,
    person_id          INTEGER NOT NULL,
    municipality_code  TEXT,
    employer_cvr       TEXT,
    employer_se        TEXT,
    held_on            TEXT,
    updated_at         TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at         TEXT
);
CREATE INDEX IF NOT EXISTS ix_absence_person_held ON absence_interviews (person_id, held_on);
CREATE INDEX IF NOT EXISTS ix_absence_updated ON absence_interviews (updated_at);

-- Area 5 (§ 25).
CREATE TABLE IF NOT EXISTS cv_interviews (
    interview_id       TEXT PRIMARY KEY,
    person_id          INTEGER NOT NULL,
    municipality_code  TEXT,
    held_on            TEXT,
    cv_status          TEXT,
    updated_at         TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at         TEXT
);
CREATE INDEX IF NOT EXISTS ix_cv_person_held ON cv_interviews (person_id, held_on);
CREATE INDEX IF NOT EXISTS ix_cv_updated ON cv_interviews (updated_at);

-- Area 6 (§ 31): scheme EMPLOYMENT (§ 30 nr. 1) or EDUCATION (§ 30 nr. 2).
CREATE TABLE IF NOT EXISTS personal_assistance_grants (
    grant_id           TEXT PRIMARY KEY,
    person_id          INTEGER NOT NULL,
    municipality_code  TEXT,
    scheme             TEXT,
    company_cvr        TEXT,
    company_pnr        TEXT,
    start_date         TEXT,
    end_date           TEXT,
    weekly_hours       REAL,
    updated_at         TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at         TEXT
);
CREATE INDEX IF NOT EXISTS ix_pa_person ON personal_assistance_grants (person_id);
CREATE INDEX IF NOT EXISTS ix_pa_updated ON personal_assistance_grants (updated_at);

-- Area 7 (§ 37): basis PERSON or SLOT (pr. plads); the persons are in mentor_grant_persons.
CREATE TABLE IF NOT EXISTS mentor_grants (
    grant_id           TEXT PRIMARY KEY,
    municipality_code  TEXT,
    basis              TEXT,
    company_cvr        TEXT,
    company_pnr        TEXT,
    start_date         TEXT,
    end_date           TEXT,
    granted_hours      REAL,
    persons_paid       INTEGER,
    avg_paid_hours     REAL,
    updated_at         TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at         TEXT
);
CREATE INDEX IF NOT EXISTS ix_mentor_updated ON mentor_grants (updated_at);

CREATE TABLE IF NOT EXISTS mentor_grant_persons (
    grant_id    TEXT NOT NULL,
    person_id   INTEGER NOT NULL,
    updated_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at  TEXT,
    PRIMARY KEY (grant_id, person_id)
);
CREATE INDEX IF NOT EXISTS ix_mentor_persons_person ON mentor_grant_persons (person_id);

-- Area 8 (§ 42, stk. 2): aid_kind TEACHING_MATERIAL or WORK_TOOLS.
CREATE TABLE IF NOT EXISTS aid_grants (
    grant_id           TEXT PRIMARY KEY,
    person_id          INTEGER NOT NULL,
    municipality_code  TEXT,
    aid_kind           TEXT,
    company_cvr        TEXT,
    company_pnr        TEXT,
    approved_on        TEXT,
    updated_at         TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    deleted_at         TEXT
);
CREATE INDEX IF NOT EXISTS ix_aid_person ON aid_grants (person_id);
CREATE INDEX IF NOT EXISTS ix_aid_updated ON aid_grants (updated_at);

-- Change detection (DESIGN.md principle 9): a daily run reads only what changed since the last mark
-- (sql/extract/*.mark.sql: the latest updated_at / deleted_at of every table an area reads; the
-- change filters: rows and persons with a stamp >= the mark). An index on both stamps of every table
-- makes the mark a lookup and the filters a range scan, not a scan of the table, however large it is.
CREATE INDEX IF NOT EXISTS ix_persons_updated ON persons (updated_at);
CREATE INDEX IF NOT EXISTS ix_persons_deleted ON persons (deleted_at);
CREATE INDEX IF NOT EXISTS ix_target_groups_updated ON person_target_groups (updated_at);
CREATE INDEX IF NOT EXISTS ix_target_groups_deleted ON person_target_groups (deleted_at);
CREATE INDEX IF NOT EXISTS ix_benefits_updated ON benefits (updated_at);
CREATE INDEX IF NOT EXISTS ix_benefits_deleted ON benefits (deleted_at);
CREATE INDEX IF NOT EXISTS ix_payments_updated ON payments (updated_at);
CREATE INDEX IF NOT EXISTS ix_payments_deleted ON payments (deleted_at);
CREATE INDEX IF NOT EXISTS ix_jobplans_updated ON jobplans (updated_at);
CREATE INDEX IF NOT EXISTS ix_jobplans_deleted ON jobplans (deleted_at);
CREATE INDEX IF NOT EXISTS ix_measures_deleted ON measures (deleted_at);
CREATE INDEX IF NOT EXISTS ix_followup_deleted ON followup_interviews (deleted_at);
CREATE INDEX IF NOT EXISTS ix_absence_deleted ON absence_interviews (deleted_at);
CREATE INDEX IF NOT EXISTS ix_cv_deleted ON cv_interviews (deleted_at);
CREATE INDEX IF NOT EXISTS ix_pa_deleted ON personal_assistance_grants (deleted_at);
CREATE INDEX IF NOT EXISTS ix_mentor_deleted ON mentor_grants (deleted_at);
CREATE INDEX IF NOT EXISTS ix_mentor_persons_updated ON mentor_grant_persons (updated_at);
CREATE INDEX IF NOT EXISTS ix_mentor_persons_deleted ON mentor_grant_persons (deleted_at);
CREATE INDEX IF NOT EXISTS ix_aid_deleted ON aid_grants (deleted_at);
