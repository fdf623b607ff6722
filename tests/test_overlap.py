"""measure.overlap sees the whole table, not one chunk: the source query finds the other measure."""

from datetime import date

import pytest
import sqlalchemy as sa

from expectations.runner import run_quality
from tests.test_golden import load_golden_sql
from transforms.mapping import map_records
from transforms.registry import get_area
from transforms.source import create_engine_from_url, extract_chunks


@pytest.mark.parametrize("chunksize", [1, 50_000])
def test_overlapping_measures_are_found_in_any_chunking(tmp_path, chunksize):
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'source.sqlite'}")
    load_golden_sql(engine, 1)
    with engine.begin() as conn:  # a second internship for G1-01's person, overlapping it
        conn.execute(sa.text(
            "INSERT INTO measures (measure_id, person_id, municipality_code, responsible_jobcenter, "
            "registering_jobcenter, measure_type, activation_type, start_date, end_date, weekly_hours, open_offer, "
            "job_order_type, provider_cvr, provider_pnr, job_title, updated_at) "
            "SELECT 'G1-99', person_id, municipality_code, responsible_jobcenter, registering_jobcenter, measure_type, "
            "activation_type, '2025-03-01', '2025-04-30', weekly_hours, open_offer, job_order_type, provider_cvr, "
            "provider_pnr, job_title, updated_at FROM measures WHERE measure_id = 'G1-01'"))
    area = get_area(1)
    found = set()
    for chunk in extract_chunks(engine, area, chunksize=chunksize):
        records = map_records(area, chunk).records
        result = run_quality(area, records, period_end=date(2026, 11, 28), run_id="t", data_docs_dir=None)
        found |= {(r.record_key, r.rule) for r in result.findings.itertuples()}
    assert {("G1-01", "measure.overlap"), ("G1-99", "measure.overlap")} <= found
    assert not {k for k, rule in found if rule == "measure.overlap"} - {"G1-01", "G1-99"}
    engine.dispose()
