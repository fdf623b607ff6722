-- make bench (portable SQL): the demo source of areas 1 and 2 copied :copies - 1 more times (bench_copies holds
-- 1 .. copies-1). Each copy gets its own persons (person_id + c * :person_stride, another CPR number),
-- payments, job plans and measures (keys with the suffix -c), so the copies never overlap and the
-- area-1 rules see the same mix of valid and defective records as the base.
--
-- A copy's CPR number (demo/scale.py _cpr_plan fills bench_people and bench_prefixes): copy c of the
-- i-th person of its kind is the g-th of the kind, g = (c - 1) * kind_count + i; its first 7 digits are
-- prefix number g / per_prefix, its serial is j = g % per_prefix. Kind "ok": digit 8 is j / 9, digit 9
-- the (j % 9)-th of the nine that leave a 10th digit of 0-9, digit 10 makes the weighted sum modulo 11
-- (4,3,2,7,6,5,4,3,2,1) the demo person's residue r: 3*d8 + 2*d9 + d10 = r - s7 (mod 11), so the copy
-- passes modulus 11 exactly when the demo person does. With t = r - s7 - 3*d8, d10 = t - 2*d9 is 10 for
-- d9 = 6*(t + 1) (mod 11), skipped. Kind "bad": an impossible date and j as three digits. "keep"
-- (0000000000, empty): as it is.
INSERT INTO persons (person_id, cpr, updated_at, deleted_at)
SELECT person_id, CASE kind
           WHEN 'ok' THEN prefix || CAST(d8 AS VARCHAR(1)) || CAST(d9 AS VARCHAR(1))
                          || CAST((t - 2 * d9 + 22) % 11 AS VARCHAR(2))
           WHEN 'bad' THEN prefix || substr('000' || CAST(j AS VARCHAR(3)), length(CAST(j AS VARCHAR(3))) + 1, 3)
           ELSE cpr END,
       updated_at, deleted_at
  FROM (SELECT s.*, k + CASE WHEN k >= (6 * (t + 1)) % 11 THEN 1 ELSE 0 END AS d9
          FROM (SELECT g.*, f.prefix, j / 9 AS d8, j % 9 AS k, (g.residue - f.s7 - 3 * (j / 9) + 44) % 11 AS t
                  FROM (SELECT p.person_id + c.c * :person_stride AS person_id, p.cpr, p.updated_at, p.deleted_at,
                               b.kind, b.residue, b.per_prefix, ((c.c - 1) * b.kind_count + b.i) / b.per_prefix AS n,
                               ((c.c - 1) * b.kind_count + b.i) % b.per_prefix AS j
                          FROM persons p JOIN bench_people b ON b.person_id = p.person_id
                         CROSS JOIN bench_copies c) g
                  LEFT JOIN bench_prefixes f ON f.kind = g.kind AND f.n = g.n) s) copy;

INSERT INTO person_target_groups (person_id, valid_from, valid_to, target_group, insured, updated_at, deleted_at)
SELECT t.person_id + c.c * :person_stride, t.valid_from, t.valid_to, t.target_group, t.insured, t.updated_at,
       t.deleted_at
  FROM person_target_groups t CROSS JOIN bench_copies c;

INSERT INTO benefits (person_id, valid_from, valid_to, benefit_code, updated_at, deleted_at)
SELECT b.person_id + c.c * :person_stride, b.valid_from, b.valid_to, b.benefit_code, b.updated_at, b.deleted_at
  FROM benefits b CROSS JOIN bench_copies c;

INSERT INTO payments (payment_id, person_id, benefit_code, period_from, period_to, amount, updated_at, deleted_at)
SELECT pay.payment_id + c.c * :payment_stride, pay.person_id + c.c * :person_stride, pay.benefit_code,
       pay.period_from, pay.period_to, pay.amount, pay.updated_at, pay.deleted_at
  FROM payments pay CROSS JOIN bench_copies c;

INSERT INTO jobplans (jobplan_id, person_id, created_on, revised_on, employment_goal, updated_at, deleted_at)
SELECT j.jobplan_id || '-' || CAST(c.c AS TEXT), j.person_id + c.c * :person_stride, j.created_on, j.revised_on,
       j.employment_goal, j.updated_at, j.deleted_at
  FROM jobplans j CROSS JOIN bench_copies c;

INSERT INTO measures (measure_id, person_id, municipality_code, responsible_jobcenter, registering_jobcenter,
                      measure_type, activation_type, start_date, end_date, weekly_hours, open_offer, jobplan_id,
                      job_order_id, job_order_type, provider_cvr, provider_pnr, ministry_area, job_title,
                      course_type, team_id, location_code, worksite_address, updated_at, deleted_at)
SELECT m.measure_id || '-' || CAST(c.c AS TEXT), m.person_id + c.c * :person_stride, m.municipality_code,
       m.responsible_jobcenter, m.registering_jobcenter, m.measure_type, m.activation_type, m.start_date,
       m.end_date, m.weekly_hours, m.open_offer, m.jobplan_id || '-' || CAST(c.c AS TEXT), m.job_order_id, m.job_order_type,
       m.provider_cvr, m.provider_pnr, m.ministry_area, m.job_title, m.course_type, m.team_id, m.location_code,
       m.worksite_address, m.updated_at, m.deleted_at
  FROM measures m CROSS JOIN bench_copies c;
