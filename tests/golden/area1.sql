-- Golden source for area 1 (Kapitel 1, § 2 and § 3): measures for unemployment-insurance recipients
-- and employed persons. Loaded into a fresh source (create_source_schema) by tests/test_golden.py;
-- the expected records are area1.records.json, the expected payload area1.payload.xml.
-- CPR numbers are synthetic (valid birth dates, serial 1234). CVR numbers pass modulus 11.
-- Person ids 101-105 and measure keys G1-* do not collide with area2.sql (the two are also loaded
-- together to prove that every measure lands in exactly one of areas 1 and 2).
--
-- Row by row (measure -> what it tests -> the expected record):
--
-- G1-01  person 101 (0101801234), LAB2-1 dagpenge recipient, a-kasse member: area 1 (§ 2 nr. 1).
--        Company-directed (VP, internship) with Jobnet job order JO-778899, job-order type PRAKTIK,
--        provider CVR 12345674 + P 1012345678, job title, and a job plan (J1-101, created 2024-11-15,
--        not revised). The source also holds a team id (HOLD-X): team id is for courses only
--        (§ 3 nr. 21), so the contract warns field.not_applicable and the record carries
--        team_id = null; course_type null; ministry_area null (not a state wage subsidy).
--        Expected: every § 3 nr. 1-16 and 18 field filled, jobplan_revised_on null.
-- G1-02  person 101, a course (VO) with course type AMU, team id AMU-2025-014 and provider
--        CVR 20000007 + P 1020000000 (§ 3 nr. 19-21), on a REVISED job plan (J1-102, created
--        2024-11-15, revised 2025-03-20). The source also holds a job title and a job-order type:
--        neither applies to a course (§ 3 nr. 15 and 18 are for company-directed measures), so the
--        contract warns field.not_applicable for both and the record carries job_title = null and
--        job_order_type = null. Expected: course_type AMU, team_id AMU-2025-014, jobplan_revised_on
--        2025-03-20, job_order_id/job_order_type/job_title/ministry_area null.
-- G1-03  person 102 (0202811234), LAB2-8 a-kasse member on the start date (2025-02-03: area 1,
--        § 2 nr. 2), no longer a member from 2025-03-01 (area 2 on the end date 2025-05-30).
--        STATUS CHANGE during the measure: it stays in area 1 (the area of its start date) and the
--        contract warns scope.status_changed. Company-directed private wage subsidy (LTP), job-order
--        type LOENTILSKUD without a Jobnet order id (§ 3 nr. 14: "where one exists") and no job
--        plan. Expected: job_order_id null, jobplan_* and employment_goal null.
--        (records frame today: NaN, not None, in G1-03/G1-05 job_order_id - KNOWN_MAPPING_DEFECTS in test_golden.py)
-- G1-04  person 103 (0303821234), BESKAEFTIGET (employed person covered by LAB, § 2 nr. 4) with no
--        a-kasse membership: still area 1. Wage subsidy in a STATE institution (LTS) with ministry
--        area UVM (§ 3 nr. 17), job order JO-445566 of type LOENTILSKUD, provider CVR 30000005 +
--        P 1030000000. Expected: ministry_area UVM, course_type/team_id null.
-- G1-05  person 104 (0404831234), LAB2-1: an internship (VP) SOFT-DELETED at the source
--        (deleted_at set). Expected: action ANNUL; the record frame still holds its fields (the
--        content hash covers them), and the payload carries only <Annulment><RecordIdentifier>.
-- G1-06  person 105 (0505841234), LAB2-8 and NOT an a-kasse member: area 2 (§ 8 nr. 2). Not a
--        record of area 1: out of scope with reason "reported in area 2 (§ 2 / § 8)".
--
-- Expected contract findings (live records only, as the pipeline checks them): G1-01 team_id
-- field.not_applicable, G1-02 job_order_type and job_title field.not_applicable, G1-03
-- scope.status_changed - warnings only, no error.

INSERT INTO persons (person_id, cpr) VALUES
    (101, '0101801234'),
    (102, '0202811234'),
    (103, '0303821234'),
    (104, '0404831234'),
    (105, '0505841234');

INSERT INTO person_target_groups (person_id, valid_from, valid_to, target_group, insured) VALUES
    (101, '2024-01-01', NULL, 'LAB2-1', 1),
    (102, '2024-01-01', '2025-02-28', 'LAB2-8', 1),
    (102, '2025-03-01', NULL, 'LAB2-8', 0),
    (103, '2024-06-01', NULL, 'BESKAEFTIGET', 0),
    (104, '2024-01-01', NULL, 'LAB2-1', 1),
    (105, '2024-01-01', NULL, 'LAB2-8', 0);

INSERT INTO benefits (person_id, valid_from, valid_to, benefit_code) VALUES
    (101, '2024-01-01', NULL, '20'),
    (102, '2024-01-01', '2025-02-28', '20'),
    (104, '2024-01-01', NULL, '20');

INSERT INTO payments (payment_id, person_id, benefit_code, period_from, period_to, amount) VALUES
    (1001, 103, '12', '2025-03-01', '2025-03-31', 9800.0);

INSERT INTO jobplans (jobplan_id, person_id, created_on, revised_on, employment_goal) VALUES
    ('J1-101', 101, '2024-11-15', NULL, 'Lager og logistik'),
    ('J1-102', 101, '2024-11-15', '2025-03-20', 'Truckfører i lager og logistik');

INSERT INTO measures (
    measure_id, person_id, municipality_code, responsible_jobcenter, registering_jobcenter, measure_type,
    activation_type, start_date, end_date, weekly_hours, open_offer, jobplan_id, job_order_id, job_order_type,
    provider_cvr, provider_pnr, ministry_area, job_title, course_type, team_id, location_code, worksite_address,
    deleted_at
) VALUES
    ('G1-01', 101, '101', '10100', '10101', 'VP', '02', '2025-01-06', '2025-03-28', 37, 0, 'J1-101',
     'JO-778899', 'PRAKTIK', '12345674', '1012345678', NULL, 'Lagermedarbejder', NULL, 'HOLD-X', '60', NULL,
     NULL),
    ('G1-02', 101, '101', '10100', '10101', 'VO', '01', '2025-04-07', '2025-05-16', 30.5, 0, 'J1-102',
     NULL, 'PRAKTIK', '20000007', '1020000000', NULL, 'Truckfører', 'AMU', 'AMU-2025-014', '65', NULL,
     NULL),
    ('G1-03', 102, '101', '10100', '10100', 'LTP', '02', '2025-02-03', '2025-05-30', 37, 0, NULL,
     NULL, 'LOENTILSKUD', '25000005', '1025000000', NULL, 'Tømrerlærling', NULL, NULL, '60', NULL,
     NULL),
    ('G1-04', 103, '101', '10100', '10101', 'LTS', '02', '2025-03-03', '2025-08-29', 37, 0, NULL,
     'JO-445566', 'LOENTILSKUD', '30000005', '1030000000', 'UVM', 'Kontorassistent', NULL, NULL, '73', NULL,
     NULL),
    ('G1-05', 104, '101', '10100', '10101', 'VP', '02', '2025-01-13', '2025-02-21', 25, 0, NULL,
     NULL, 'PRAKTIK', '31000009', '1031000000', NULL, 'Køkkenmedhjælper', NULL, NULL, '60', NULL,
     '2025-02-10 09:00:00'),
    ('G1-06', 105, '101', '10100', '10101', 'VP', '02', '2025-02-17', '2025-04-11', 30, 0, NULL,
     NULL, 'PRAKTIK', '35000003', '1035000000', NULL, 'Butiksassistent', NULL, NULL, '60', NULL,
     NULL);
