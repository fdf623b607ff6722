-- Golden source for area 5 (Kapitel 5, §§ 24-25): CV interviews held by the municipality, and the
-- CV's approval status. Loaded by tests/test_golden.py; expected records area5.records.json, payload
-- area5.payload.xml. CPR numbers are synthetic.
--
-- § 24 limits the area to (1) kontanthjælp/starthjælp solely because of unemployment (LAB § 2
-- nr. 2: target group LAB2-2) and (2) integration benefit solely because of unemployment
-- (IL-LEDIG), on the interview date. Anyone else is out of scope.
--
-- Row by row (interview -> what it tests -> the expected record):
--
-- G5-01  person 501 (2307811234), LAB2-2 on the interview date: IN. held 2025-02-11, status KLAR.
--        Expected: a record with cv_status "KLAR".
-- G5-02  person 502 (2408821234), IL-LEDIG: IN. held 2025-03-04, status GODKENDT.
--        Expected: a record with cv_status "GODKENDT".
-- G5-03  person 503 (2509831234), LAB2-1 (dagpenge recipient, a-kasse member): OUT, reason "person
--        outside § 24's groups on the interview date". No record.
-- G5-04  person 504 (2610841234), LAB2-2 until 2025-01-31, LAB2-3 (kontanthjælp for other reasons)
--        from 2025-02-01; interview held 2025-03-10: OUT (the group ON the interview date counts),
--        same reason. No record.
-- Expected contract findings: none.

INSERT INTO persons (person_id, cpr) VALUES
    (501, '2307811234'),
    (502, '2408821234'),
    (503, '2509831234'),
    (504, '2610841234');

INSERT INTO person_target_groups (person_id, valid_from, valid_to, target_group, insured) VALUES
    (501, '2024-10-01', NULL, 'LAB2-2', 0),
    (502, '2024-11-01', NULL, 'IL-LEDIG', 0),
    (503, '2024-01-01', NULL, 'LAB2-1', 1),
    (504, '2024-01-01', '2025-01-31', 'LAB2-2', 0),
    (504, '2025-02-01', NULL, 'LAB2-3', 0);

INSERT INTO benefits (person_id, valid_from, valid_to, benefit_code) VALUES
    (501, '2024-10-01', NULL, '10'),
    (502, '2024-11-01', NULL, '50'),
    (503, '2024-01-01', NULL, '20'),
    (504, '2024-01-01', NULL, '10');

INSERT INTO cv_interviews (interview_id, person_id, municipality_code, held_on, cv_status) VALUES
    ('G5-01', 501, '101', '2025-02-11', 'KLAR'),
    ('G5-02', 502, '101', '2025-03-04', 'GODKENDT'),
    ('G5-03', 503, '101', '2025-03-05', 'GODKENDT'),
    ('G5-04', 504, '101', '2025-03-10', 'IKKE_GODKENDT');
