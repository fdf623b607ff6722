"""The run report's large tables streamed from the state DB (reports.tables), and the CSVs of a day
with no change linked instead of written again (reports.pages.write_run_page, issue 9).

The streamed findings must be exactly what the page and findings.csv showed when they were read as
one frame (`StateStore.run_findings`, sorted by area, record key, severity and rule): same rows, same
order, same counts per rule, same first warnings.
"""

from __future__ import annotations

import csv
import json
from datetime import date, datetime

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery.state import StateStore
from reports import pages, tables
from reports.summary import write_run_report

# --- the reference: how the report read the findings before (one frame, sorted in pandas) -----------


def _reference_rows(state: StateStore, run_id: str) -> list[tuple]:
    frame = state.run_findings(run_id)
    if frame.empty:
        return []
    frame = frame.sort_values(["area", "record_key", "severity", "rule"], kind="stable")
    frame = frame.astype(object).where(frame.notna(), None)
    return [(int(a), str(k), str(r), pages.scrub(f), pages.scrub(p), str(s), pages.scrub(m))
            for a, k, r, f, p, s, m in zip(*(frame[c].tolist() for c in tables.FINDING_COLUMNS), strict=True)]


def _reference_counts(rows: list[tuple]) -> list[tuple]:
    if not rows:
        return []
    findings = pd.DataFrame(rows, columns=list(tables.FINDING_COLUMNS))
    error = findings["severity"] == "error"
    keys = ["area", "rule"]
    counts = pd.DataFrame({
        "errors": findings[error].groupby(keys)["record_key"].nunique(),
        "warnings": findings[~error].groupby(keys)["record_key"].nunique(),
        "findings": findings.groupby(keys)["record_key"].size(),
    }).fillna(0)
    return sorted((int(a), str(r), int(c.errors), int(c.warnings), int(c.findings))
                  for (a, r), c in zip(counts.index, counts.itertuples(index=False), strict=True))


def _streamed(state: StateStore, run_id: str, chunk: int, shown: int) -> tuple[list[tuple], tables.FindingsTally]:
    tally = tables.FindingsTally(shown)
    rows = []
    for part in tables.run_findings_chunks(state, run_id, chunk=chunk):
        assert len(part) <= chunk
        for row in part:
            tally.add(row)
            rows.append(row)
    return rows, tally


ALL_KEYS = ["1", "10", "2", "B", "a", "=SUM(A1)", "-7", "Å"]
KEYS = st.sampled_from(ALL_KEYS)
COLUMNS = ["record_key", "rule", "field", "paragraph", "severity", "message"]
FINDING = st.fixed_dictionaries({
    "record_key": KEYS,
    "rule": st.sampled_from(["cpr.bad_date", "code.invalid", "cpr.no_modulus11", "Zed.rule"]),
    "field": st.sampled_from(["person_cpr", "activation_type", None]),
    "paragraph": st.sampled_from(["§ 3 nr. 1", None]),
    "severity": st.sampled_from(["error", "warning"]),
    "message": st.sampled_from(["fails modulus 11", "person_cpr 0101901234: bad", "+1 too many"]),
})
DAY = st.fixed_dictionaries({"areas": st.sets(st.sampled_from([1, 2]), min_size=1),
                             "findings": st.lists(FINDING, max_size=12)})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(days=st.lists(DAY, min_size=1, max_size=4), chunk=st.integers(1, 5), shown=st.integers(0, 6))
def test_streamed_findings_are_the_frame_the_report_read_before(tmp_path_factory, days, chunk, shown):
    """Property: for every run, the streamed rows (any chunk size) are the reference rows in the
    reference order, and the tally's counts and first warnings are the reference's."""
    state = StateStore(f"sqlite:///{tmp_path_factory.mktemp('tables') / 'state.sqlite'}")
    runs = []
    for n, day in enumerate(days):
        run_id = f"r{n}"
        for area in sorted(day["areas"]):
            state.start_area_run(run_id, area)
            frame = pd.DataFrame(day["findings"], columns=COLUMNS).drop_duplicates()
            # every key read: a finding no longer found is resolved, a new one stored
            state.record_findings(run_id, area, frame, read=ALL_KEYS)
        runs.append(run_id)
    for run_id in runs:
        expected = _reference_rows(state, run_id)
        rows, tally = _streamed(state, run_id, chunk, shown)
        assert rows == expected
        assert sorted(tally.rule_counts()) == _reference_counts(expected)
        warned = [r for r in expected if r[5] != "error"]
        assert tally.warnings_count == len(warned)
        assert [tuple(w.values()) for w in tally.warnings] == warned[:shown]
        assert not any("0101901234" in r[6] for r in rows)  # scrubbed


@pytest.mark.postgres
def test_streamed_findings_sort_text_as_python_does_on_postgresql(pg_url):
    """PostgreSQL's database collation may sort "B" after "a": the stream orders by code point."""
    state = StateStore(pg_url)
    state.start_area_run("r1", 1)
    keys = ["b", "B", "a", "A", "_x", "10", "9", "Å"]
    state.record_findings("r1", 1, pd.DataFrame({"record_key": keys, "rule": "code.invalid", "field": "f",
                                                 "paragraph": "p", "severity": "error", "message": "m"}))
    rows, tally = _streamed(state, "r1", 3, 10)
    assert [r[1] for r in rows] == sorted(keys) == [r[1] for r in _reference_rows(state, "r1")]
    assert tally.rule_counts() == [(1, "code.invalid", len(keys), 0, len(keys))]
    state.engine.dispose()


# --- a day with no change: the CSVs are linked, not written again ----------------------------------


@pytest.fixture
def demo(tmp_path, monkeypatch):
    from tests.test_delivery_faults import demo_settings

    return demo_settings(tmp_path, monkeypatch, persons=150, defect_rate=0.1)


def _csv_rows(path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _without_stamp(page: str) -> str:
    return "\n".join(line for line in page.splitlines() if not line.startswith("<p class=\"muted small\">Written"))


def _json(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_a_day_without_change_links_both_csvs_without_reading_the_findings(demo, monkeypatch, tmp_path, request):
    from cycle.pipeline import deliver_area, prepare_area
    from receiver.server import start_in_thread
    from tests.test_delivery_faults import client
    from transforms.source import create_engine_from_url

    day = date(2026, 11, 28)
    receiver = start_in_thread(tmp_path / "receiver.sqlite")
    request.addfinalizer(receiver.stop)

    def run(run_id: str) -> None:  # a day: prepared and delivered, as the DAG runs it
        prepare_area(1, run_id=run_id, period_end=day, settings=demo)
        deliver_area(1, run_id=run_id, settings=demo, client=client(receiver))

    run("r1")
    write_run_report("r1", demo)
    run("r2")  # nothing changed at the source
    state = demo.state()
    runs = demo.reports_dir / "runs"

    streamed = tables.run_findings_chunks

    def not_read(*args, **kwargs):
        raise AssertionError("the findings were read again on a day without change")

    monkeypatch.setattr(tables, "run_findings_chunks", not_read)
    write_run_report("r2", demo)
    monkeypatch.setattr(tables, "run_findings_chunks", streamed)

    for name in ("findings.csv", "quarantine.csv"):  # one copy, two names
        assert (runs / "r1" / name).stat().st_ino == (runs / "r2" / name).stat().st_ino, name
    assert len(_csv_rows(runs / "r2" / "findings.csv")) == len(state.run_findings("r2")) > 0
    quarantine = _csv_rows(runs / "r2" / "quarantine.csv")
    assert quarantine and {r["last_seen_run"] for r in quarantine} == {pages.THIS_RUN}
    assert {r["first_seen_run"] for r in quarantine} == {"r1"}
    # nothing changed: a short page that says so and points to r1's full page, not the full page again
    page = (runs / "r2" / "index.html").read_text(encoding="utf-8")
    assert 'id="no-change"' in page and 'href="../r1/index.html"' in page
    assert 'data-counts-area="1"' in page and 'id="plots"' not in page and 'data-rule=' not in page
    assert len(page.encode()) < 8_000 < (runs / "r1" / "index.html").stat().st_size
    assert _json(runs / "r2" / "report.json")["page"] == "r1"
    assert 'id="plots"' in (runs / "r1" / "index.html").read_text(encoding="utf-8")
    write_run_report("r2", demo)  # its own report again: still quiet, still pointing to r1
    assert 'href="../r1/index.html"' in (runs / "r2" / "index.html").read_text(encoding="utf-8")
    # the open quarantine and warnings page: a day without change shares it with the day before (one
    # copy, a few kB of run page a day), the day after the first run included. A quarantined record read
    # again as it was (its person stamped, nothing else changed) leaves the day quiet.
    again = state.open_quarantine(1)[0]
    engine = create_engine_from_url(demo.source_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE persons SET updated_at = :now WHERE person_id = "
                             "(SELECT person_id FROM measures WHERE measure_id = :k)"),
                     {"k": again["record_key"], "now": datetime.now().strftime("%Y-%m-%d %H:%M:%S")})
    engine.dispose()
    run("r2b")
    seen = next(q for q in state.open_quarantine(1) if q["record_key"] == again["record_key"])
    assert seen["last_seen_run"] == "r2b" and seen["updated_at"] == again["updated_at"]
    write_run_report("r2b", demo)
    lists = runs / "r2b" / "quarantine.html"
    assert lists.stat().st_ino == (runs / "r2" / "quarantine.html").stat().st_ino
    assert lists.stat().st_ino == (runs / "r1" / "quarantine.html").stat().st_ino
    assert lists.stat().st_nlink == 4  # r1, r2, r2b and the shared copy
    assert "data-quarantine-area=" in lists.read_text(encoding="utf-8")
    quiet = (runs / "r2b" / "index.html").read_text(encoding="utf-8")
    assert "data-quarantine-area=" not in quiet
    assert 'href="../r1/index.html"' in quiet  # a row of quiet days: each points to the last full page

    # a record is withdrawn at the source: its findings are resolved, the next report writes findings.csv anew
    gone = state.run_findings("r2")["record_key"].iloc[0]
    engine = create_engine_from_url(demo.source_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE measures SET deleted_at = :now, updated_at = :now WHERE measure_id = :k"),
                     {"k": gone, "now": datetime.now().strftime("%Y-%m-%d %H:%M:%S")})
    engine.dispose()
    run("r3")
    write_run_report("r3", demo)
    rows = _csv_rows(runs / "r3" / "findings.csv")
    assert len(rows) == len(state.run_findings("r3")) and gone not in {r["record_key"] for r in rows}
    assert (runs / "r3" / "findings.csv").stat().st_ino != (runs / "r2" / "findings.csv").stat().st_ino
    page = (runs / "r3" / "index.html").read_text(encoding="utf-8")
    assert 'id="no-change"' not in page and _json(runs / "r3" / "report.json")["page"] == "r3"
    assert _without_stamp(page) == _without_stamp(pages.render_run_page("r3", demo))


def test_a_run_that_started_before_the_previous_report_is_read_in_full(demo, monkeypatch):
    """Its findings could be in the table the previous report looked at: nothing is taken over."""
    from cycle.pipeline import prepare_area

    day = date(2026, 11, 28)
    prepare_area(1, run_id="r1", period_end=day, settings=demo)
    prepare_area(1, run_id="r2", period_end=day, settings=demo)
    write_run_report("r1", demo)  # after r2 started
    reads = []
    streamed = tables.run_findings_chunks

    def counted(*args, **kwargs):
        reads.append(args[1])
        return streamed(*args, **kwargs)

    monkeypatch.setattr(tables, "run_findings_chunks", counted)
    write_run_report("r2", demo)
    assert reads == ["r2"]
    write_run_report("r2", demo)  # its own report again, nothing changed: taken over
    assert reads == ["r2"]
