-- Golden source for area 3 (Kapitel 3, § 14): follow-up interviews with sick-listed persons, held
-- by the municipality, and their visitation category. Loaded by tests/test_golden.py; expected
-- records area3.records.json, payload area3.payload.xml. CPR numbers are synthetic.
--
-- The visitation categories 1-3 were reused with other meanings by the 2014 sickness-benefit reform:
-- each record says which rules its category follows (visitation_rules, derived from held_on by
-- reference/visitation_categories.csv: 2005 up to and including 2014-06-29, 2014 from 2014-06-30).
--
-- Row by row (interview -> what it tests -> the expected record):
--
-- G3-01  person 301 (1501751234), held 2012-05-14, form 1 (personal attendance), category 2.
--        Expected: visitation_rules "2005".
-- G3-02  person 302 (1602761234), held 2014-06-29 (the last day of the 2005 rules), form 2
--        (telephone), category 3. Expected: visitation_rules "2005".
-- G3-03  person 302, held 2014-06-30 (the first day of the 2014 rules), form 6 (meeting at the
--        workplace), category 1. Expected: visitation_rules "2014".
-- G3-04  person 303 (1703771234), held 2025-09-15, form 3 (digital), category 2.
--        Expected: visitation_rules "2014".
-- Every record: municipality_code "101", action CREATE_OR_UPDATE. A sickness-benefit payment covers
-- each interview (reconciliation, § 15). Expected contract findings: none.

INSERT INTO persons (person_id, cpr) VALUES
    (301, '1501751234'),
    (302, '1602761234'),
    (303, '1703771234');

INSERT INTO payments (payment_id, person_id, benefit_code, period_from, period_to, amount) VALUES
    (3001, 301, NULL, '2012-04-01', '2012-06-30', 24000.0),
    (3002, 302, NULL, '2014-05-01', '2014-07-31', 26000.0),
    (3003, 303, NULL, '2025-08-01', '2025-10-31', 31000.0);

INSERT INTO followup_interviews (interview_id, person_id, municipality_code, held_on, interview_form,
                                 visitation_category) VALUES
    ('G3-01', 301, '101', '2012-05-14', '1', '2'),
    ('G3-02', 302, '101', '2014-06-29', '2', '3'),
    ('G3-03', 302, '101', '2014-06-30', '6', '1'),
    ('G3-04', 303, '101', '2025-09-15', '3', '2');
