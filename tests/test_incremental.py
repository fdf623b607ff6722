"""Change detection (DESIGN.md principle 9, issue 9): reading only what changed at the source gives the
same result as reading everything.

Two pipelines on one source, each with its own state DB and receiver: one reads the changes only
(incremental), the other reads the whole source every day (`full_read`, the safety net). After every day
of a randomised sequence of source changes (an hour corrected, a code broken or fixed, a measure deleted
or added, a person's target group, benefit, payment, job plan or CPR number changed, the reporting period
moving on), both receivers hold the same records, both ledgers and quarantines agree, and the
incremental one read far less.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa

from cycle.pipeline import Settings, deliver_area, prepare_area
from delivery.client import AmsClient
from demo import synthetic
from receiver.store import ReceiverStore
from transforms.source import create_engine_from_url, create_source_schema

AREAS = (1, 2)
FIRST_DAY = date(2026, 11, 2)


def _stamp(day: int, n: int) -> str:
    return (datetime(2026, 11, 1, 6) + timedelta(days=day, seconds=n)).isoformat(sep=" ")


def _change(conn: sa.Connection, rng: random.Random, day: int) -> list[str]:
    """One day's edits at the source, each stamped as the contract demands (updated_at / deleted_at)."""
    done = []
    live = conn.execute(sa.text("SELECT measure_id, person_id FROM measures WHERE deleted_at IS NULL "
                                "ORDER BY measure_id")).all()
    persons = [r.person_id for r in conn.execute(sa.text("SELECT person_id FROM persons ORDER BY person_id"))]
    for n in range(rng.randint(0, 4)):
        stamp = _stamp(day, n)
        kind = rng.choice(["hours", "code", "fix", "delete", "add", "group", "benefit", "payment", "jobplan", "cpr"])
        measure, person = rng.choice(live)
        if kind == "hours":
            conn.execute(sa.text("UPDATE measures SET weekly_hours = :h, updated_at = :s WHERE measure_id = :m"),
                         {"h": rng.choice([10.0, 20.5, 37.0, 99.0]), "s": stamp, "m": measure})
        elif kind == "code":
            conn.execute(sa.text("UPDATE measures SET activation_type = 'ZZ', updated_at = :s WHERE measure_id = :m"),
                         {"s": stamp, "m": measure})
        elif kind == "fix":
            conn.execute(sa.text("UPDATE measures SET activation_type = '02', weekly_hours = 30.0, updated_at = :s "
                                 "WHERE measure_id = :m"), {"s": stamp, "m": measure})
        elif kind == "delete":
            conn.execute(sa.text("UPDATE measures SET deleted_at = :s, updated_at = :s WHERE measure_id = :m"),
                         {"s": stamp, "m": measure})
        elif kind == "add":
            conn.execute(sa.text(
                "INSERT INTO measures (measure_id, person_id, municipality_code, responsible_jobcenter, "
                "registering_jobcenter, measure_type, activation_type, start_date, end_date, weekly_hours, "
                "open_offer, jobplan_id, job_order_id, job_order_type, provider_cvr, provider_pnr, ministry_area, "
                "job_title, course_type, team_id, location_code, worksite_address, updated_at, deleted_at) "
                "SELECT :new, person_id, municipality_code, responsible_jobcenter, registering_jobcenter, "
                "measure_type, activation_type, :start, end_date, weekly_hours, open_offer, jobplan_id, job_order_id, "
                "job_order_type, provider_cvr, provider_pnr, ministry_area, job_title, course_type, team_id, "
                "location_code, worksite_address, :s, NULL FROM measures WHERE measure_id = :m"),
                {"new": f"NEW-{day}-{n}", "s": stamp, "m": measure,
                 "start": (FIRST_DAY + timedelta(days=day + rng.randint(-3, 3))).isoformat()})
        elif kind == "group":
            conn.execute(sa.text("UPDATE person_target_groups SET target_group = :g, insured = :i, updated_at = :s "
                                 "WHERE person_id = :p"),
                         {"g": rng.choice(["LAB2-1", "LAB2-2", "LAB2-3", "BESKAEFTIGET"]), "i": rng.randint(0, 1),
                          "s": stamp, "p": person})
        elif kind == "benefit":
            conn.execute(sa.text("UPDATE benefits SET benefit_code = :c, updated_at = :s WHERE person_id = :p"),
                         {"c": rng.choice(["10", "20", "42"]), "s": stamp, "p": person})
            conn.execute(sa.text("UPDATE benefits SET deleted_at = :s WHERE person_id = :p AND :drop = 1"),
                         {"s": stamp, "p": person, "drop": rng.randint(0, 1)})
        elif kind == "payment":
            conn.execute(sa.text("UPDATE payments SET deleted_at = :s, updated_at = :s WHERE person_id = :p"),
                         {"s": stamp, "p": person})
        elif kind == "jobplan":
            conn.execute(sa.text("UPDATE jobplans SET revised_on = :r, updated_at = :s WHERE person_id = :p"),
                         {"r": (FIRST_DAY + timedelta(days=day + 5)).isoformat(), "s": stamp, "p": person})
        else:
            other = rng.choice(persons)
            conn.execute(sa.text("UPDATE persons SET cpr = (SELECT cpr FROM persons WHERE person_id = :o), "
                                 "updated_at = :s WHERE person_id = :p"), {"o": other, "s": stamp, "p": person})
        done.append(kind)
    return done


def _receiver_view(path) -> dict:
    return {r["record_id"]: (r["status"], r["version"], r["payload_xml"], r["resends"])
            for r in ReceiverStore(path).records()}


def _state_view(settings: Settings) -> dict:
    state = settings.state()
    out = {}
    for area in AREAS:
        rows = state.ledger_rows(area)
        rows = rows.astype(object).where(rows.notna(), None)
        out[f"ledger{area}"] = sorted(map(tuple, rows[["record_key", "record_id", "status", "receiver_state",
                                                       "accepted_hash", "rejected_hash", "error_code"]].values))
    quarantine = state.open_quarantine()
    out["quarantine"] = sorted((q["area"], q["record_key"], str(sorted(map(str, q["findings"])))) for q in quarantine)
    return out


@pytest.mark.parametrize(("database", "seed"), [("sqlite", 3), ("sqlite", 17), ("postgresql", 5)])
def test_reading_the_changes_gives_what_reading_everything_gives(tmp_path, monkeypatch, request, database, seed):
    from receiver.server import start_in_thread

    sqlite = f"sqlite:///{tmp_path / 'source.sqlite'}"
    source = request.getfixturevalue("pg_url") if database == "postgresql" else sqlite
    engine = create_engine_from_url(source)
    create_source_schema(engine)
    synthetic.generate(engine, persons=90, defect_rate=0.05, seed=seed)
    monkeypatch.setenv("AMS_ARCHIVE_KEY_FILE", str(tmp_path / "key"))
    from delivery.archive import load_keys

    load_keys(tmp_path / "key", create=True)
    pipelines = {}
    for name, full in (("incremental", False), ("full", True)):
        settings = Settings(home=tmp_path / name, source_url=source, state_url=f"sqlite:///{tmp_path / name}.sqlite",
                            data_docs=False, batch_size=50, full_read=full, full_read_every_days=10_000,
                            backoff_seconds=0.01)
        pipelines[name] = (settings, start_in_thread(tmp_path / f"{name}-receiver.sqlite"))
    rng = random.Random(seed)
    read = {"incremental": 0, "full": 0}
    try:
        for day in range(6):
            with engine.begin() as conn:
                edits = _change(conn, rng, day) if day else []
            period_end = FIRST_DAY + timedelta(days=3 * day)
            for name, (settings, receiver) in pipelines.items():
                for area in AREAS:
                    run = f"day{day}"
                    prepared = prepare_area(area, run_id=run, period_end=period_end, settings=settings)
                    assert prepared["full_read"] == int(name == "full" or day == 0)
                    read[name] += prepared["extracted"] + prepared.get("out_of_scope", 0)
                    deliver_area(area, run_id=run, settings=settings,
                                 client=AmsClient(receiver.wsdl_url, insecure_for_tests=True))
            incremental, full = (pipelines[n] for n in ("incremental", "full"))
            assert _receiver_view(incremental[1].db_path) == _receiver_view(full[1].db_path), (day, edits)
            assert _state_view(incremental[0]) == _state_view(full[0]), (day, edits)
    finally:
        for _settings, receiver in pipelines.values():
            receiver.stop()
        engine.dispose()
    assert read["incremental"] < read["full"] / 2
