"""Change detection (DESIGN.md principle 9, issue 9): reading only what changed at the source gives the
same result as reading everything, in all eight areas.

Two pipelines on one source, each with its own state DB and receiver: one reads the changes only
(incremental), the other reads the whole source every day (`full_read`, the safety net). After every day
of a randomised sequence of source changes, both receivers hold the same records, both ledgers agree,
both quarantines agree and both hold the same findings (warnings too: a reconciliation that no longer holds
changes only a warning), and the incremental one read far less.

The changes touch every table an area reads, including those that only feed derived columns: each area's
own rows (a field corrected, a code broken, a date moved after the reporting period, a soft delete by
`deleted_at` alone, a row added), a person's CPR number, target group, benefit, payments (removed or
added), job plan, and the persons of a mentor grant (one removed, one added). Every kind is done at least
once per sequence (a shuffled deck), on records of the areas that read the table.
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
from transforms.identifiers import mask_cpr_in_text
from transforms.source import SOURCE_TABLES, create_engine_from_url, create_source_schema, db_value

ALL_AREAS = (1, 2, 3, 4, 5, 6, 7, 8)
FIRST_DAY = date(2026, 11, 2)
DAYS = 6

# An area's own table: its key, the date that dates.future checks, a field to break or change, a bad value.
OWN = {
    "followup_interviews": ("interview_id", "held_on", "visitation_category", "ZZ"),
    "absence_interviews": ("interview_id", "held_on", "employer_cvr", "11111111"),  # fails modulus 11
    "cv_interviews": ("interview_id", "held_on", "cv_status", "ZZ"),
    "personal_assistance_grants": ("grant_id", "start_date", "scheme", "ZZ"),
    "mentor_grants": ("grant_id", "start_date", "company_cvr", "11111111"),
    "aid_grants": ("grant_id", "approved_on", "aid_kind", "ZZ"),
}
# Changes in the tables that only feed derived columns (or the CPR number), each made for a person of every
# area table that reads them.
FEEDS = {
    "group": ("measures", "cv_interviews"),
    "benefit": ("measures", "cv_interviews"),
    "payment_drop": ("measures", "followup_interviews", "personal_assistance_grants"),
    "payment_add": ("measures", "followup_interviews", "personal_assistance_grants"),
    "jobplan": ("measures",),
    "cpr": ("measures", "followup_interviews", "absence_interviews", "cv_interviews",
            "personal_assistance_grants", "mentor_grant_persons", "aid_grants"),
}
KINDS = (
    ["hours", "code", "fix", "delete", "add"]
    + [f"{table}:{edit}" for table in OWN for edit in ("break", "change", "future", "delete", "add")]
    + [f"{kind}@{table}" for kind, tables in FEEDS.items() for table in tables]
    + ["mentor_person_drop", "mentor_person_add"]
)
_DATE_OF = {"measures": "start_date", **{table: spec[1] for table, spec in OWN.items()}}


def _stamp(day: int, n: int) -> str:
    return (datetime(2026, 11, 1, 6) + timedelta(days=day, seconds=n)).isoformat(sep=" ")


def _iso(value) -> str:
    return str(value)[:10]  # a date or its ISO text, as the dialect returns it


def _one(conn: sa.Connection, rng: random.Random, sql: str, **params):
    rows = conn.execute(sa.text(sql), params).all()
    return rng.choice(rows) if rows else None


def _change_own(conn: sa.Connection, rng: random.Random, table: str, edit: str, day: int, stamp: str,
                period_end: date) -> bool:
    key, dated, field, bad = OWN[table]
    row = _one(conn, rng, f"SELECT {key} AS k FROM {table} WHERE deleted_at IS NULL ORDER BY {key}")
    if row is None:
        return False
    where = {"s": stamp, "k": row.k}
    if edit == "break":
        conn.execute(sa.text(f"UPDATE {table} SET {field} = :v, updated_at = :s WHERE {key} = :k"), {**where, "v": bad})
    elif edit == "change":  # another live row's value: usually valid, so a correction or a fix
        other = _one(conn, rng, f"SELECT {field} AS v FROM {table} WHERE deleted_at IS NULL ORDER BY {key}")
        conn.execute(sa.text(f"UPDATE {table} SET {field} = :v, updated_at = :s WHERE {key} = :k"),
                     {**where, "v": other.v})
    elif edit == "future":  # after this period, inside a later one: valid again once the period moves on
        first = period_end + timedelta(days=rng.randint(1, 5))
        ends = ", end_date = :e" if "end_date" in SOURCE_TABLES[table] else ""
        conn.execute(sa.text(f"UPDATE {table} SET {dated} = :d{ends}, updated_at = :s WHERE {key} = :k"),
                     {**where, "d": first.isoformat(), "e": (first + timedelta(days=30)).isoformat()})
    elif edit == "delete":  # the soft delete alone, updated_at untouched
        live = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE deleted_at IS NULL")).scalar_one()
        if live <= 2:  # a copy first: later changes of the day still find a live row (the table is small)
            _change_own(conn, rng, table, "add", day, stamp, period_end)
        conn.execute(sa.text(f"UPDATE {table} SET deleted_at = :s WHERE {key} = :k"), where)
    else:
        columns = SOURCE_TABLES[table]
        values = ", ".join(":new" if c == key else ":s" if c == "updated_at" else "NULL" if c == "deleted_at"
                           else ":d" if c == dated else c for c in columns)
        new = f"NEW-{table[:3]}-{day}-{stamp[-2:]}"
        conn.execute(sa.text(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} FROM {table} "
                             f"WHERE {key} = :k"),
                     {**where, "new": new, "d": (FIRST_DAY + timedelta(days=day + rng.randint(-3, 3))).isoformat()})
        if table == "mentor_grants":
            conn.execute(sa.text("INSERT INTO mentor_grant_persons (grant_id, person_id, updated_at) "
                                 "SELECT :new, person_id, :s FROM mentor_grant_persons "
                                 "WHERE grant_id = :k AND deleted_at IS NULL"), {**where, "new": new})
    return True


def _change_feed(conn: sa.Connection, rng: random.Random, kind: str, table: str, day: int, n: int, stamp: str,
                 persons: list[int]) -> bool:
    """A change in a table that feeds derived columns, for a person with a live row in `table` (an area's
    table that reads it)."""
    dated = _DATE_OF.get(table)
    row = _one(conn, rng, f"SELECT person_id{f', {dated} AS d' if dated else ''} FROM {table} "
                          "WHERE deleted_at IS NULL ORDER BY 1")
    if row is None:
        return False
    person = row.person_id
    if kind == "group":
        conn.execute(sa.text("UPDATE person_target_groups SET target_group = :g, insured = :i, updated_at = :s "
                             "WHERE person_id = :p"),
                     {"g": rng.choice(["LAB2-1", "LAB2-2", "LAB2-3", "IL-LEDIG", "BESKAEFTIGET"]),
                      "i": db_value(bool(rng.randint(0, 1)), conn), "s": stamp, "p": person})
    elif kind == "benefit":
        conn.execute(sa.text("UPDATE benefits SET benefit_code = :c, updated_at = :s WHERE person_id = :p"),
                     {"c": rng.choice(["10", "20", "42"]), "s": stamp, "p": person})
        conn.execute(sa.text("UPDATE benefits SET deleted_at = :s WHERE person_id = :p AND :drop = 1"),
                     {"s": stamp, "p": person, "drop": rng.randint(0, 1)})
    elif kind == "payment_drop":
        conn.execute(sa.text("UPDATE payments SET deleted_at = :s, updated_at = :s WHERE person_id = :p"),
                     {"s": stamp, "p": person})
    elif kind == "payment_add":  # covers the record's date: reconciles turns true
        on = date.fromisoformat(_iso(row.d))
        conn.execute(sa.text("INSERT INTO payments (payment_id, person_id, benefit_code, period_from, period_to, "
                             "amount, updated_at) VALUES (:id, :p, NULL, :f, :t, 1000.0, :s)"),
                     {"id": 900_000 + 100 * day + n, "p": person, "f": (on - timedelta(days=10)).isoformat(),
                      "t": (on + timedelta(days=10)).isoformat(), "s": stamp})
    elif kind == "jobplan":
        conn.execute(sa.text("UPDATE jobplans SET revised_on = :r, updated_at = :s WHERE person_id = :p"),
                     {"r": (FIRST_DAY + timedelta(days=day + 5)).isoformat(), "s": stamp, "p": person})
    else:
        other = rng.choice(persons)
        conn.execute(sa.text("UPDATE persons SET cpr = (SELECT cpr FROM persons WHERE person_id = :o), "
                             "updated_at = :s WHERE person_id = :p"), {"o": other, "s": stamp, "p": person})
    return True


def _change_mentor_persons(conn: sa.Connection, rng: random.Random, kind: str, stamp: str,
                           persons: list[int]) -> bool:
    # A member of a live grant (it is sent) that nothing else changed today (made last in the day, see
    # _change): only the change of its persons can make the grant be read again.
    member = _one(conn, rng, "SELECT gp.grant_id, gp.person_id FROM mentor_grant_persons gp "
                             "JOIN mentor_grants g ON g.grant_id = gp.grant_id "
                             "WHERE gp.deleted_at IS NULL AND g.deleted_at IS NULL AND g.updated_at < :today "
                             "AND NOT EXISTS (SELECT 1 FROM mentor_grant_persons o JOIN persons p "
                             "ON p.person_id = o.person_id WHERE o.grant_id = gp.grant_id AND (o.updated_at >= :today "
                             "OR o.deleted_at >= :today OR p.updated_at >= :today)) ORDER BY gp.grant_id, gp.person_id",
                  today=stamp[:10]) or _one(
        conn, rng, "SELECT gp.grant_id, gp.person_id FROM mentor_grant_persons gp JOIN mentor_grants g "
                   "ON g.grant_id = gp.grant_id WHERE gp.deleted_at IS NULL AND g.deleted_at IS NULL "
                   "ORDER BY gp.grant_id, gp.person_id")
    if member is None:
        return False
    if kind == "mentor_person_drop":  # the soft delete alone
        conn.execute(sa.text("UPDATE mentor_grant_persons SET deleted_at = :s WHERE grant_id = :g AND person_id = :p"),
                     {"s": stamp, "g": member.grant_id, "p": member.person_id})
        return True
    taken = {r.person_id for r in conn.execute(
        sa.text("SELECT person_id FROM mentor_grant_persons WHERE grant_id = :g"), {"g": member.grant_id})}
    conn.execute(sa.text("INSERT INTO mentor_grant_persons (grant_id, person_id, updated_at) VALUES (:g, :p, :s)"),
                 {"g": member.grant_id, "p": rng.choice([p for p in persons if p not in taken]), "s": stamp})
    return True


def _change(conn: sa.Connection, rng: random.Random, day: int, kinds: list[str], period_end: date) -> list[str]:
    """One day's edits at the source, each stamped as the contract demands (updated_at / deleted_at)."""
    done = []
    live = conn.execute(sa.text("SELECT measure_id, person_id FROM measures WHERE deleted_at IS NULL "
                                "ORDER BY measure_id")).all()
    persons = [r.person_id for r in conn.execute(sa.text("SELECT person_id FROM persons ORDER BY person_id"))]
    kinds = sorted(kinds, key=lambda kind: kind.startswith("mentor_person"))  # stable: the rest keep their order
    for n, kind in enumerate(kinds):
        stamp = _stamp(day, n)
        measure, _person = rng.choice(live)
        if ":" in kind:
            table, edit = kind.split(":")
            changed = _change_own(conn, rng, table, edit, day, stamp, period_end)
        elif "@" in kind:
            feed, table = kind.split("@")
            changed = _change_feed(conn, rng, feed, table, day, n, stamp, persons)
        elif kind.startswith("mentor_person"):
            changed = _change_mentor_persons(conn, rng, kind, stamp, persons)
        else:
            changed = _change_measure(conn, rng, kind, day, n, stamp, measure)
        if changed:
            done.append(kind)
    return done


def _change_measure(conn: sa.Connection, rng: random.Random, kind: str, day: int, n: int, stamp: str,
                    measure: str) -> bool:
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
    else:
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
    return True


def _differences(incremental: dict, full: dict) -> str:
    """What differs, by part: the entries only one side has (the first few, CPR numbers masked: payloads
    hold them)."""
    out = []
    for part in sorted(set(incremental) | set(full)):
        a, b = incremental.get(part, []), full.get(part, [])
        a, b = (set(x.items()) if isinstance(x, dict) else set(x) for x in (a, b))
        if a != b:
            show = [sorted(map(str, x))[:4] for x in (a - b, b - a)]
            out.append(f"{part}: only incremental {show[0]}, only full {show[1]}")
    return mask_cpr_in_text("\n".join(out)) or ""


def _receiver_view(path) -> dict:
    return {r["record_id"]: (r["status"], r["version"], r["payload_xml"], r["resends"])
            for r in ReceiverStore(path).records()}


def _state_view(settings: Settings, areas: tuple[int, ...], run: str) -> dict:
    state = settings.state()
    out = {}
    for area in areas:
        rows = state.ledger_rows(area)
        rows = rows.astype(object).where(rows.notna(), None)
        out[f"ledger{area}"] = sorted(map(tuple, rows[["record_key", "record_id", "status", "receiver_state",
                                                       "accepted_hash", "rejected_hash", "error_code"]].values))
    quarantine = state.open_quarantine()
    out["quarantine"] = sorted((q["area"], q["record_key"], str(sorted(map(str, q["findings"])))) for q in quarantine)
    # The findings that held when the run ran, warnings included (reconciliation is only a warning).
    found = state.run_findings(run)
    out["findings"] = sorted(map(tuple, found[["area", "record_key", "rule", "field", "severity", "message"]]
                                 .astype(object).where(found.notna(), None).values))
    return out


def _deck(rng: random.Random) -> list[list[str]]:
    """Every kind of change once, in a random order, spread over the days after the first (which reads the
    source as generated), plus a few repeats: changes of one day meet in the same records."""
    kinds = KINDS + rng.sample(KINDS, 6)
    rng.shuffle(kinds)
    days = DAYS - 1
    cuts = sorted(rng.sample(range(1, len(kinds)), days - 1))
    return [[]] + [kinds[a:b] for a, b in zip([0, *cuts], [*cuts, len(kinds)], strict=True)]


@pytest.mark.parametrize(("database", "seed"), [("sqlite", 3), ("sqlite", 17), ("postgresql", 1)])
def test_reading_the_changes_gives_what_reading_everything_gives(tmp_path, monkeypatch, request, database, seed):
    from receiver.server import start_in_thread

    sqlite = f"sqlite:///{tmp_path / 'source.sqlite'}"
    source = request.getfixturevalue("pg_url") if database == "postgresql" else sqlite
    engine = create_engine_from_url(source)
    create_source_schema(engine)
    synthetic.generate(engine, persons=90, defect_rate=0.05, seed=seed)
    with engine.connect() as conn:  # every kind of change needs a live row of each area's table to change
        assert all(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE deleted_at IS NULL")).scalar_one()
                   for table in OWN), f"seed {seed}: an area's table has no live row; pick another seed"
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
    done: list[str] = []
    try:
        for day, kinds in enumerate(_deck(rng)):
            period_end = FIRST_DAY + timedelta(days=3 * day)
            with engine.begin() as conn:
                edits = _change(conn, rng, day, kinds, period_end)
            done += edits
            run = f"day{day}"
            for name, (settings, receiver) in pipelines.items():
                for area in ALL_AREAS:
                    prepared = prepare_area(area, run_id=run, period_end=period_end, settings=settings)
                    assert prepared["full_read"] == int(name == "full" or day == 0), (area, name, day)
                    read[name] += prepared["extracted"] + prepared.get("out_of_scope", 0)
                    deliver_area(area, run_id=run, settings=settings,
                                 client=AmsClient(receiver.wsdl_url, insecure_for_tests=True))
            incremental, full = (pipelines[n] for n in ("incremental", "full"))
            views = [{"receiver": _receiver_view(receiver.db_path), **_state_view(settings, ALL_AREAS, run)}
                     for settings, receiver in (incremental, full)]
            assert views[0] == views[1], f"day {day}, edits {edits}:\n{_differences(*views)}"
    finally:
        for _settings, receiver in pipelines.values():
            receiver.stop()
        engine.dispose()
    assert set(done) == set(KINDS), set(KINDS) - set(done)  # every kind of change was made
    assert read["incremental"] < read["full"] / 2
