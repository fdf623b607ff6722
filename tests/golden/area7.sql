-- Golden source for area 7 (Kapitel 7, §§ 36-37): mentor support, per person and per slot (pr.
-- plads, LAB § 80, stk. 2). Loaded by tests/test_golden.py; expected records area7.records.json,
-- payload area7.payload.xml. CPR numbers are synthetic; CVR numbers pass modulus 11.
--
-- A record has no single person: person_cprs lists the persons who get mentor support (§ 37
-- nr. 10 of the Danish text), sorted, from the live rows of mentor_grant_persons.
-- The § 37 numbers below follow the Danish text (nr. 3-4 person grant period, 5-6 slot period, 7 granted
-- hours, 8 persons paid for, 9 average hours, 10 persons); the registry numbers them differently.
--
-- Row by row (grant -> what it tests -> the expected record):
--
-- G7-01  PERSON grant: company CVR 40000003 + P 1040000000, grant 2025-02-01 to 2025-07-31
--        (§ 37 nr. 3-4), 60 granted mentor hours (nr. 7), one person 701 (0101871234).
--        Expected: granted_hours 60.0, persons_paid null, avg_paid_hours null,
--        person_cprs ["0101871234"].
-- G7-02  SLOT grant: company CVR 35000003 + P 1035000000, period paid for 2025-01-01 to 2025-03-31
--        (§ 37 nr. 5-6), 3 persons paid for (nr. 8), 4.5 average paid hours per person (nr. 9).
--        Persons 702-704 are linked in an unsorted order; a fourth link (person 705) is
--        soft-deleted and must not be listed. The source also holds granted_hours 40, which is for
--        person grants only: field.not_applicable warning, granted_hours null.
--        Expected: persons_paid 3, avg_paid_hours 4.5, granted_hours null,
--        person_cprs ["0201881234", "0301891234", "0402901234"] (sorted).
--        (records frame today: persons_paid is the float 3.0, not the int 3, because G7-01's is None in
--        the same chunk; its content_hash is computed from "3.00" - KNOWN_MAPPING_DEFECTS in test_golden.py)
-- Expected contract findings: G7-02 granted_hours field.not_applicable (warning). No error.

INSERT INTO persons (person_id, cpr) VALUES
    (701, '0101871234'),
    (702, '0402901234'),
    (703, '0201881234'),
    (704, '0301891234'),
    (705, '0503911234');

INSERT INTO mentor_grants (grant_id, municipality_code, basis, company_cvr, company_pnr, start_date, end_date,
                           granted_hours, persons_paid, avg_paid_hours) VALUES
    ('G7-01', '101', 'PERSON', '40000003', '1040000000', '2025-02-01', '2025-07-31', 60, NULL, NULL),
    ('G7-02', '101', 'SLOT', '35000003', '1035000000', '2025-01-01', '2025-03-31', 40, 3, 4.5);

INSERT INTO mentor_grant_persons (grant_id, person_id, deleted_at) VALUES
    ('G7-01', 701, NULL),
    ('G7-02', 702, NULL),
    ('G7-02', 703, NULL),
    ('G7-02', 704, NULL),
    ('G7-02', 705, '2025-01-20 08:00:00');
