"""Prepare's threads (AMS_PREPARE_THREADS): the same batches as on one thread, the XSD's error and the
`prepare.staged` crash with the same effect (the batches before it staged, none after)."""

from __future__ import annotations

import re
from datetime import date

import pytest

from cycle import pipeline
from cycle.pipeline import Settings, prepare_area, threads_pay
from delivery import failpoints
from delivery.archive import PAYLOAD_FILE
from demo import synthetic
from transforms import payload as payload_module
from transforms.payload import PayloadError
from transforms.source import create_engine_from_url, create_source_schema

AREA = 1
PERIOD_END = date(2026, 11, 28)
BUILT = ("built",)  # staged, never sent


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    return make_source(tmp_path_factory.mktemp("threads-source"))


def make_source(folder) -> str:
    """The demo's generator, 400 persons, 3 % defects: ~130 area-1 records, some quarantined."""
    url = f"sqlite:///{folder / 'source.sqlite'}"
    engine = create_engine_from_url(url)
    create_source_schema(engine)
    synthetic.generate(engine, persons=400, defect_rate=0.03)
    engine.dispose()
    return url


def settings_for(source: str, tmp_path, monkeypatch, threads: str, name: str) -> Settings:
    """Small chunks and batches: several chunks, a batch across a chunk's end, many batches."""
    monkeypatch.setenv("AMS_ARCHIVE_KEY_FILE", str(tmp_path / "key"))
    return Settings(home=tmp_path / name, source_url=source, state_url=f"sqlite:///{tmp_path / name}.sqlite",
                    data_docs=False, chunksize=120, batch_size=25, prepare_threads=threads,
                    prepare_process="off")  # the threads alone (a checking child turns the stage thread off)


def staged(settings: Settings, batch_ids: list[str]) -> list[tuple]:
    """Each staged batch: its id, its members, and its payload without the build time."""
    state, vault = settings.state(), settings.vault()
    out = []
    for batch_id in batch_ids:
        members = state.batch_members(batch_id).sort_values("record_key").reset_index(drop=True)
        text = vault.open(state.staged_blob(batch_id, PAYLOAD_FILE)).decode()
        out.append((batch_id, members.to_dict("records"),
                    re.sub(r"<([\w:]*)CreatedDateTime>[^<]*<", r"<\1CreatedDateTime><", text)))
    return out


def test_the_setting():
    assert threads_pay("on") and threads_pay("1") and not threads_pay("off") and not threads_pay("0")
    with pytest.raises(ValueError, match="AMS_PREPARE_THREADS must be auto, on or off"):
        threads_pay("sometimes")


def test_auto_takes_a_free_core_only(monkeypatch):
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(pipeline.os, "getloadavg", lambda: (0.6, 0.0, 0.0))
    assert threads_pay("auto")
    monkeypatch.setattr(pipeline.os, "getloadavg", lambda: (4.8, 0.0, 0.0))  # every core busy
    assert not threads_pay("auto")
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    monkeypatch.setattr(pipeline.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert not threads_pay("auto")  # one core: nothing to gain


def test_threads_stage_the_same_batches(source, tmp_path, monkeypatch):
    results = {}
    for threads in ("off", "on"):
        settings = settings_for(source, tmp_path, monkeypatch, threads, threads)
        prepared = prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
        assert len(prepared["batches"]) >= 5
        phases = settings.state().run_rows("run-1")[0]["counts"]["phases"]
        assert ("stage_wait" in phases) == (threads == "on")
        assert {"xsd", "encrypt"} <= phases.keys()  # timed either way (rounded: a small batch can show 0.0)
        counts = {k: v for k, v in prepared.items() if k != "batches"}
        results[threads] = (counts, staged(settings, prepared["batches"]))
    assert results["on"] == results["off"]


@pytest.mark.parametrize("threads", ["off", "on"])
def test_an_xsd_failure_stops_the_run_with_the_batches_before_it_staged(source, tmp_path, monkeypatch, threads):
    settings = settings_for(source, tmp_path, monkeypatch, threads, "s")
    real = payload_module.validate_payload
    calls = []

    def third_fails(xml: bytes) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise PayloadError("payload does not validate against ams-reporting-v1.xsd (1 problem(s)):\n  line 9: x")
        real(xml)

    monkeypatch.setattr(payload_module, "validate_payload", third_fails)
    with pytest.raises(PayloadError, match=r"line 9: x"):
        prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    assert len(settings.state().batches_in(AREA, BUILT)) == 2


def test_a_crash_before_the_batch_is_stored_stages_nothing_and_a_rerun_stages_all(source, tmp_path, monkeypatch):
    settings = settings_for(source, tmp_path, monkeypatch, "on", "s")
    failpoints.arm("prepare.staged")
    try:
        with pytest.raises(failpoints.InjectedCrash):
            prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    finally:
        failpoints.disarm()
    assert settings.state().batches_in(AREA, BUILT) == []
    prepared = prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    off = settings_for(source, tmp_path, monkeypatch, "off", "off")
    assert prepared["batches"] == prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=off)["batches"]
