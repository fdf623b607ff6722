-- make bench (portable SQL): the demo source of areas 1 and 2 copied :copies - 1 more times (bench_copies holds
-- 1 .. copies-1). Each copy gets its own persons (person_id + c * :person_stride, a CPR with another
-- serial), payments, job plans and measures (keys with the suffix -c), so the copies never overlap
-- and the area-1 rules see the same mix of valid and defective records as the base.
INSERT INTO persons (person_id, cpr, updated_at, deleted_at)
SELECT p.person_id + c.c * :person_stride,
       -- the birth date and century digit kept, the last three digits from the copy number
       substr(p.cpr, 1, 7) || substr('000' || CAST(c.c % 1000 AS TEXT), length(CAST(c.c % 1000 AS TEXT)) + 1, 3),
       p.updated_at, p.deleted_at
  FROM persons p CROSS JOIN bench_copies c;

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
