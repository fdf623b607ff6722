-- Golden source for area 6 (Kapitel 6, §§ 30-31): subsidy for personal assistance to persons with
-- disabilities. Loaded by tests/test_golden.py; expected records area6.records.json, payload
-- area6.payload.xml. CPR numbers are synthetic; CVR numbers pass modulus 11.
--
-- § 31 asks, for each of the two groups of § 30, for the person, the municipality, the CVR + P of
-- the company that receives the subsidy, the grant's start and end, and the granted average hours
-- per week. The group is the record's scheme.
--
-- Row by row (grant -> what it tests -> the expected record):
--
-- G6-01  person 601 (2711851234), scheme EMPLOYMENT (§ 30 nr. 1: persons in employment), company
--        CVR 12345674 + P 1012345678, 2025-01-01 to 2025-12-31, 20 hours a week.
--        Expected: weekly_hours 20.0 (payload 20.00).
-- G6-02  person 602 (2812861234), scheme EDUCATION (§ 30 nr. 2: further education), the place of
--        education's CVR 30000005 + P 1030000002, 2025-08-15 to 2025-12-19, 12.5 hours a week.
--        Expected: weekly_hours 12.5 (payload 12.50).
-- A payment overlaps each grant (reconciliation, § 32). Expected contract findings: none.

INSERT INTO persons (person_id, cpr) VALUES
    (601, '2711851234'),
    (602, '2812861234');

INSERT INTO payments (payment_id, person_id, benefit_code, period_from, period_to, amount) VALUES
    (6001, 601, NULL, '2025-01-01', '2025-03-31', 42000.0),
    (6002, 602, NULL, '2025-08-15', '2025-09-30', 11000.0);

INSERT INTO personal_assistance_grants (grant_id, person_id, municipality_code, scheme, company_cvr, company_pnr,
                                        start_date, end_date, weekly_hours) VALUES
    ('G6-01', 601, '101', 'EMPLOYMENT', '12345674', '1012345678', '2025-01-01', '2025-12-31', 20),
    ('G6-02', 602, '101', 'EDUCATION', '30000005', '1030000002', '2025-08-15', '2025-12-19', 12.5);
