-- Golden source for area 8 (Kapitel 8, § 42): aids - (1) teaching material, (2) work tools and
-- minor workplace adaptations. Loaded by tests/test_golden.py; expected records area8.records.json,
-- payload area8.payload.xml. CPR numbers are synthetic; the CVR number passes modulus 11.
--
-- § 42, stk. 2 asks per subsidy for the municipality, the CVR + P of the company *where the company
-- receives the subsidy*, the approval date, and the person who uses the aid.
--
-- Row by row (grant -> what it tests -> the expected record):
--
-- G8-01  TEACHING_MATERIAL (§ 42, stk. 1, nr. 1) paid to the person 801 (0602921234): no company.
--        Approved 2025-02-20. Expected: company_cvr null, company_pnr null, no finding (the P-number
--        is required only when the company receives the subsidy).
--        (records frame today: NaN, not None, in G8-01 company_cvr - KNOWN_MAPPING_DEFECTS in test_golden.py)
-- G8-02  WORK_TOOLS (§ 42, stk. 1, nr. 2) paid to the company CVR 25000005 + P 1025000001, used by
--        person 802 (0703931234). Approved 2025-05-06. Expected: both company numbers filled.
-- Expected contract findings: none.

INSERT INTO persons (person_id, cpr) VALUES
    (801, '0602921234'),
    (802, '0703931234');

INSERT INTO aid_grants (grant_id, person_id, municipality_code, aid_kind, company_cvr, company_pnr, approved_on)
VALUES
    ('G8-01', 801, '101', 'TEACHING_MATERIAL', NULL, NULL, '2025-02-20'),
    ('G8-02', 802, '101', 'WORK_TOOLS', '25000005', '1025000001', '2025-05-06');
