-- Golden source for area 4 (Kapitel 4, § 19): sickness-absence interviews held by the employer.
-- Loaded by tests/test_golden.py; expected records area4.records.json, payload area4.payload.xml.
-- CPR numbers are synthetic; the CVR number passes modulus 11.
--
-- § 19 asks for the person, the CVR OR the SE number of the reporting company, and the date: no
-- municipality code (the source row has one; the extraction does not read it).
--
-- Row by row (interview -> what it tests -> the expected record):
--
-- G4-01  person 401 (2004781234), employer reports by CVR 40000003, no SE number, held 2025-03-12.
--        Expected: employer_cvr "40000003", employer_se null.
-- G4-02  person 402 (2105791234), employer reports by SE number 21000000 only (no CVR), held
--        2025-04-02. Expected: employer_cvr null, employer_se "21000000" (required when there is
--        no CVR, condition no_cvr: satisfied).
--        (records frame today: NaN, not None, in G4-01 employer_se, G4-02 employer_cvr - KNOWN_MAPPING_DEFECTS in test_golden.py)
-- Expected contract findings: none.

INSERT INTO persons (person_id, cpr) VALUES
    (401, '2004781234'),
    (402, '2105791234');

INSERT INTO absence_interviews (interview_id, person_id, municipality_code, employer_cvr, employer_se, held_on)
VALUES
    ('G4-01', 401, '101', '40000003', NULL, '2025-03-12'),
    ('G4-02', 402, '101', NULL, '21000000', '2025-04-02');
