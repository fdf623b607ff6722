-- Golden source for area 2 (Kapitel 2, § 8 and § 9): measures for non-insured persons.
-- Loaded into a fresh source by tests/test_golden.py; expected records area2.records.json, expected
-- payload area2.payload.xml. CPR numbers are synthetic (valid birth dates, serial 1234); CVR numbers
-- pass modulus 11. Person ids 201-206 and keys G2-* do not collide with area1.sql.
-- AMS_AREA2_JOBPLAN_FROM (§ 50, stk. 2) is unset in the test: the job-plan fields are reported.
--
-- Row by row (measure -> what it tests -> the expected record):
--
-- G2-01  person 201 (0606851234), LAB2-3 (kontanthjælp for other reasons than unemployment), main
--        benefit 10 on the start date. Company-directed internship (VP) at location code 60 (§ 9
--        nr. 13), provider CVR 25000005 + P 1025000000 (nr. 14), job title (nr. 17), job plan J2-201
--        created 2024-12-02 and revised 2025-02-14 (nr. 9-12). The source also holds a team id:
--        team id is for courses only (§ 9 nr. 19) -> field.not_applicable warning, team_id null.
--        Expected: main_benefit "10", open_offer false, worksite_address null (CVR and P given).
-- G2-02  person 202 (0707861234), IL-SELV: SELF-SUPPORTING under the integration act (§ 8 nr. 4),
--        no benefit spell at all. Danish tuition course (VO) with provider CVR 31000009 + P 1031000000
--        (§ 9 nr. 18) and team id DU-2025-03 (nr. 19). Expected: main_benefit "99" (§ 9 nr. 7:
--        self-supporting is recorded as such), location_code/job_title/worksite_address/ministry_area
--        null (company-directed only), no job plan.
-- G2-03  person 203 (0808871234), LAB2-2 (kontanthjælp for unemployment only), benefit 10.
--        Company-directed internship whose provider has a CVR (35000003) but NO P-number: the
--        WORKSITE ADDRESS is given (§ 9 nr. 15). Expected: provider_pnr null, worksite_address
--        "Industrivej 12, 2600 Glostrup", no finding (address_needed is satisfied).
--        (records frame today: NaN, not None, in G2-03 provider_pnr, G2-01/G2-05 worksite_address - KNOWN_MAPPING_DEFECTS in test_golden.py)
-- G2-04  person 204 (0909881234), IL-INTRO (introduction allowance, § 8 nr. 3), main benefit 50.
--        OPEN OFFER (§ 9 nr. 8): a course (VO) paid only for hours attended. Expected: open_offer
--        true, main_benefit "50", team_id HOLD-17, provider CVR 40000003 + P 1040000000.
-- G2-05  person 205 (1010891234), LAB2-3, benefit 12 from the start date (an earlier spell 10 ended
--        the day before: the spell valid ON the start date wins). Wage subsidy in a STATE institution
--        (LTS) with ministry area SUM (§ 9 nr. 16), location 73. Expected: main_benefit "12",
--        ministry_area SUM.
-- G2-06  person 206 (1111901234), LAB2-8 and an a-kasse MEMBER: area 1 (§ 2 nr. 2), not area 2.
--        Out of scope here with reason "reported in area 1 (§ 2 / § 8)".
--
-- Expected contract findings: G2-01 team_id field.not_applicable (warning). No error.

INSERT INTO persons (person_id, cpr) VALUES
    (201, '0606851234'),
    (202, '0707861234'),
    (203, '0808871234'),
    (204, '0909881234'),
    (205, '1010891234'),
    (206, '1111901234');

INSERT INTO person_target_groups (person_id, valid_from, valid_to, target_group, insured) VALUES
    (201, '2024-06-01', NULL, 'LAB2-3', 0),
    (202, '2024-09-01', NULL, 'IL-SELV', 0),
    (203, '2024-03-01', NULL, 'LAB2-2', 0),
    (204, '2024-08-01', NULL, 'IL-INTRO', 0),
    (205, '2024-01-01', NULL, 'LAB2-3', 0),
    (206, '2024-01-01', NULL, 'LAB2-8', 1);

INSERT INTO benefits (person_id, valid_from, valid_to, benefit_code) VALUES
    (201, '2024-06-01', NULL, '10'),
    (203, '2024-03-01', NULL, '10'),
    (204, '2024-08-01', NULL, '50'),
    (205, '2024-01-01', '2025-03-02', '10'),
    (205, '2025-03-03', NULL, '12');

INSERT INTO jobplans (jobplan_id, person_id, created_on, revised_on, employment_goal) VALUES
    ('J2-201', 201, '2024-12-02', '2025-02-14', 'Detailhandel');

INSERT INTO measures (
    measure_id, person_id, municipality_code, responsible_jobcenter, registering_jobcenter, measure_type,
    activation_type, start_date, end_date, weekly_hours, open_offer, jobplan_id, job_order_id, job_order_type,
    provider_cvr, provider_pnr, ministry_area, job_title, course_type, team_id, location_code, worksite_address,
    deleted_at
) VALUES
    ('G2-01', 201, '101', '10100', '10101', 'VP', '02', '2025-01-06', '2025-03-14', 30, 0, 'J2-201',
     NULL, 'PRAKTIK', '25000005', '1025000000', NULL, 'Butiksmedhjælper', NULL, 'HOLD-Y', '60', NULL, NULL),
    ('G2-02', 202, '101', '10100', '10101', 'VO', '01', '2025-02-03', '2025-06-27', 15, 0, NULL,
     NULL, NULL, '31000009', '1031000000', NULL, NULL, 'DANSK', 'DU-2025-03', NULL, NULL, NULL),
    ('G2-03', 203, '101', '10100', '10101', 'VP', '02', '2025-03-03', '2025-04-25', 25, 0, NULL,
     NULL, 'PRAKTIK', '35000003', NULL, NULL, 'Pakkeriassistent', NULL, NULL, '60',
     'Industrivej 12, 2600 Glostrup', NULL),
    ('G2-04', 204, '101', '10100', '10101', 'VO', '01', '2025-04-01', '2025-09-30', 20, 1, NULL,
     NULL, NULL, '40000003', '1040000000', NULL, NULL, 'SAER', 'HOLD-17', NULL, NULL, NULL),
    ('G2-05', 205, '101', '10100', '10101', 'LTS', '02', '2025-03-03', '2025-12-19', 37, 0, NULL,
     'JO-990011', 'LOENTILSKUD', '30000005', '1030000001', 'SUM', 'Portør', NULL, NULL, '73', NULL, NULL),
    ('G2-06', 206, '101', '10100', '10101', 'VP', '02', '2025-05-05', '2025-06-27', 30, 0, NULL,
     NULL, 'PRAKTIK', '12345674', '1012345679', NULL, 'Lagerassistent', NULL, NULL, '60', NULL, NULL);
