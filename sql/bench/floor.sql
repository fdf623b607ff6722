-- make bench's floor: the rows of area 1's query tables, read plainly (no derivations, no checks).
SELECT p.cpr AS person_cpr, m.*, j.created_on AS jobplan_created_on, j.revised_on AS jobplan_revised_on,
       j.employment_goal AS employment_goal
  FROM measures m
  LEFT JOIN persons p ON p.person_id = m.person_id
  LEFT JOIN jobplans j ON j.jobplan_id = m.jobplan_id
 ORDER BY m.measure_id
