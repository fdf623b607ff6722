"""Prepare's checks in a child process (AMS_PREPARE_PROCESS, cycle.checks): the same batches, findings and
quarantine as in the task's process; the batches' XSD checks there too, a failing one stopping the run with the
batches before it staged; a read of one chunk starts no child; a daemonic task checks in its own process; a
child that dies stops the run with a message, nothing of its chunks staged."""

from __future__ import annotations

import multiprocessing
import os
import pickle

import pytest

from cycle import checks
from cycle.checks import CheckerStopped, process_pays
from cycle.pipeline import Settings, prepare_area
from tests.test_prepare_threads import AREA, BUILT, PERIOD_END, make_source, settings_for, staged
from transforms.payload import PayloadError


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    return make_source(tmp_path_factory.mktemp("process-source"))


def with_process(settings: Settings, process: str) -> Settings:
    """Chunks of 30 rows: the area's ~130 records in five chunks, so that the child has several to check."""
    settings.prepare_process, settings.chunksize = process, 30
    return settings


def outcome(settings: Settings, prepared: dict) -> tuple:
    """What a preparation left: its counts, staged batches, findings and quarantine (times and ids aside)."""
    state = settings.state()
    counts = {k: v for k, v in prepared.items() if k != "batches"}
    findings = state.run_findings("run-1").drop(columns=["run_id"], errors="ignore")
    findings = findings.sort_values(list(findings.columns)).reset_index(drop=True).to_dict("records")
    quarantine = sorted((q["record_key"], q["masked_person"], q["findings"]) for q in state.open_quarantine(AREA))
    return counts, staged(settings, prepared["batches"]), findings, quarantine


def test_the_setting():
    assert process_pays("on") and not process_pays("off")
    with pytest.raises(ValueError, match="AMS_PREPARE_PROCESS must be auto, on or off"):
        process_pays("maybe")


def test_unset_variables_keep_the_settings_defaults(monkeypatch):
    """`Settings.from_env` states no default of its own: a variable not set gives the field's default (the chunk
    size's changed in one place), a variable set is read."""
    import dataclasses

    for name in [n for n in os.environ if n.startswith("AMS_")]:
        monkeypatch.delenv(name)
    read, defaults = Settings.from_env(), Settings()
    for f in dataclasses.fields(Settings):
        if f.name not in ("source_url", "state_url"):  # the env's: the demo's files under home
            assert getattr(read, f.name) == getattr(defaults, f.name), f.name
    monkeypatch.setenv("AMS_CHUNK_SIZE", "7")
    assert Settings.from_env().chunksize == 7


def test_a_child_process_checks_to_the_same_result(source, tmp_path, monkeypatch):
    results = {}
    for process in ("off", "on"):
        settings = with_process(settings_for(source, tmp_path, monkeypatch, "on", process), process)
        prepared = prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
        assert len(prepared["batches"]) >= 5
        assert prepared["quarantined"] > 0 and prepared["extracted"] > 3 * settings.chunksize  # several chunks
        counts = settings.state().run_rows("run-1")[0]["counts"]
        assert ("check_wait" in counts["phases"]) == (process == "on")
        assert {"map", "contract", "quality", "hash"} <= counts["phases"].keys()
        # the child's own peak is reported beside the task's
        assert (counts.get("peak_rss_mib_checks", 0) > 50) == (process == "on")
        results[process] = outcome(settings, prepared)
    assert results["on"] == results["off"]


def test_a_read_of_one_chunk_starts_no_child(source, tmp_path, monkeypatch):
    settings = with_process(settings_for(source, tmp_path, monkeypatch, "off", "one"), "on")
    settings.chunksize = 1_000_000
    prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    counts = settings.state().run_rows("run-1")[0]["counts"]
    assert "check_wait" not in counts["phases"] and "peak_rss_mib_checks" not in counts


def prepare_in_daemon(settings: Settings, answer) -> None:
    """In a daemonic process (as a Celery prefork child is): prepare, with the child process asked for."""
    prepared = prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    phases = settings.state().run_rows("run-1")[0]["counts"]["phases"]
    answer.put((len(prepared["batches"]), "check_wait" in phases))


def test_a_daemonic_task_checks_in_its_own_process(source, tmp_path, monkeypatch):
    settings = with_process(settings_for(source, tmp_path, monkeypatch, "off", "daemon"), "on")
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    daemon = context.Process(target=prepare_in_daemon, args=(settings, answer), daemon=True)
    daemon.start()
    batches, in_child = answer.get(timeout=300)
    daemon.join(60)
    assert daemon.exitcode == 0
    assert batches >= 5 and not in_child


def die(tasks, *_args):
    """The child's work: it takes the first chunk and dies (as the kernel's OOM killer would end it)."""
    tasks.get()
    os._exit(9)


def test_a_child_that_dies_stops_the_run_and_stages_nothing_of_its_chunks(source, tmp_path, monkeypatch):
    settings = with_process(settings_for(source, tmp_path, monkeypatch, "on", "dies"), "on")
    monkeypatch.setattr(checks, "serve", die)
    with pytest.raises(CheckerStopped, match="AMS_PREPARE_PROCESS=off"):
        prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    assert settings.state().batches_in(AREA, BUILT) == []
    # and the run can be repeated as it is, in the task's process
    settings.prepare_process = "off"
    assert prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)["batches"]


def serve_failing_third_xsd(tasks, results, area, kwargs):
    """The child's work, with its third XSD check failing (a payload the XSD refuses)."""
    from transforms import payload

    real, calls = payload.validate_payload, []

    def third_fails(xml: bytes) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise PayloadError("payload does not validate against ams-reporting-v1.xsd (1 problem(s)):\n  line 9: x",
                               ["line 9: x"])
        real(xml)

    payload.validate_payload = third_fails
    checks.serve(tasks, results, area, kwargs)


def test_the_child_checks_the_batches_xsd_and_a_failure_stops_the_run_with_those_before_it(source, tmp_path,
                                                                                            monkeypatch):
    settings = with_process(settings_for(source, tmp_path, monkeypatch, "off", "xsd"), "on")
    monkeypatch.setattr(checks, "serve", serve_failing_third_xsd)  # a spawned child runs the original
    with pytest.raises(PayloadError, match=r"line 9: x") as failed:
        prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
    assert failed.value.problems == ["line 9: x"]  # the exception made the trip whole
    assert len(settings.state().batches_in(AREA, BUILT)) == 2


class NeedsTwo(Exception):
    def __init__(self, first, second):
        super().__init__(f"{first} {second}")


def test_an_answer_that_cannot_make_the_trip_becomes_a_runtime_error_with_its_message():
    """A queue pickles in its own thread and only prints what it cannot pickle: the task would wait forever."""
    answer = pickle.loads(checks._pickled(("failed", NeedsTwo("a", "b"))))
    assert answer[0] == "failed" and isinstance(answer[1], RuntimeError) and str(answer[1]) == "NeedsTwo: a b"
    assert pickle.loads(checks._pickled(("valid", 0.5))) == ("valid", 0.5)


def test_messages_to_and_from_the_child_make_the_trip_whole():
    """`dumps` pickles without the memo; a frame comes back equal (values, dtypes, index), a cycle the usual way."""
    import pandas as pd

    frame = pd.DataFrame({"text": ["a", None, "a", ""], "hours": [1.5, None, 2.0, 0.0], "n": [1, 2, 3, 4]},
                         index=[7, 3, 9, 1]).astype({"text": object})
    frame["same"] = frame["text"]  # the same objects twice
    pd.testing.assert_frame_equal(pickle.loads(checks.dumps(("check", "run-0", frame)))[2], frame)
    looped: list = [1]
    looped.append(looped)
    back = pickle.loads(checks.dumps(looped))
    assert back[0] == 1 and back[1] is back


def test_a_checked_chunk_makes_the_trip_with_its_dates_as_they_were():
    """`good`'s columns of dates travel as datetime64 and come back as `datetime.date` and None, in their order;
    a column with anything else beside dates (a datetime, a text, NaN) travels as it is."""
    from datetime import date, datetime

    import pandas as pd

    good = pd.DataFrame({
        "record_key": ["k1", "k2", "k3"],
        "start_date": [date(2025, 1, 31), date(1, 1, 1), date(9999, 12, 31)],
        "end_date": [None, date(2025, 2, 1), None],
        "stamped": [datetime(2025, 1, 1, 12, 0), None, datetime(2025, 1, 2)],  # datetime is a date subclass
        "odd": [date(2025, 1, 1), "2025-01-02", None],
        "nan": [date(2025, 1, 1), float("nan"), None],
        "none": [None, None, None],
    }, index=[4, 8, 15]).astype(object)
    checked = checks.CheckedChunk(extracted=3, out_of_scope=0, read_keys=["k1", "k2", "k3"], found=pd.DataFrame(),
                                  persons={}, good=good)
    packed = checks._DatesPacked(good)
    assert sorted(packed.dates) == ["end_date", "start_date"]
    back = pickle.loads(checks.dumps(("checked", checked)))[1]
    pd.testing.assert_frame_equal(back.good, good, check_exact=True)
    for column in good.columns:
        assert [type(v) for v in back.good[column]] == [type(v) for v in good[column]], column
    assert back.read_keys == checked.read_keys and back.extracted == 3
    empty = good.iloc[:0]
    pd.testing.assert_frame_equal(checks._DatesPacked(empty).frame(), empty)


@pytest.mark.parametrize("chunksize", [30, 1_000_000])
def test_a_child_started_while_a_slow_first_chunk_is_read(source, tmp_path, monkeypatch, chunksize):
    """A first chunk slow to come starts the child meanwhile (here: any); a read of one chunk after all stops it
    and checks in the task's process, a read of several uses it. Either way the outcome is the task's own."""
    from cycle import pipeline

    monkeypatch.setattr(pipeline._FirstChunk, "slow", lambda self, seconds: True)
    started = []
    real_start = checks._start_child
    monkeypatch.setattr(checks, "_start_child", lambda *a: started.append(1) or real_start(*a))
    results = {}
    for process in ("off", "on"):
        settings = with_process(settings_for(source, tmp_path, monkeypatch, "off", f"early-{process}"), process)
        settings.chunksize = chunksize
        prepared = prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
        phases = settings.state().run_rows("run-1")[0]["counts"]["phases"]
        assert ("check_wait" in phases) == (process == "on" and chunksize == 30)
        results[process] = outcome(settings, prepared)
    assert started == [1]  # once, before the first chunk came, and not again
    assert results["on"] == results["off"]


def test_a_first_chunk_is_slow_when_it_is_not_there_in_time():
    import time

    from cycle import pipeline
    from cycle.timing import PhaseTimer

    def chunks(pause: float):
        time.sleep(pause)
        yield "the first chunk"

    slow = pipeline._FirstChunk(chunks(2.0), PhaseTimer(), threads=True)
    assert slow.slow(0.05)
    assert slow.next() == "the first chunk"
    quick = pipeline._FirstChunk(chunks(0.0), PhaseTimer(), threads=True)
    assert not quick.slow(5.0)
    assert not pipeline._FirstChunk(chunks(0.0), PhaseTimer(), threads=False).slow(5.0)  # no thread: read later


@pytest.mark.parametrize("xsd_ahead", [0, 1])
def test_batches_checked_by_the_task_when_the_child_has_enough_give_the_same_result(source, tmp_path, monkeypatch,
                                                                                     xsd_ahead):
    """Beyond `Checker.XSD_AHEAD` checks waiting in the child the task checks a batch itself: 0, every batch; 1,
    the two mixed. The batches are recorded in build order and are the task's own either way."""
    results = {}
    for process in ("off", "on"):
        settings = with_process(settings_for(source, tmp_path, monkeypatch, "off", f"ahead-{process}"), process)
        settings.batch_size = 10  # several batches a chunk: some wait in the child while the next are built
        monkeypatch.setattr(checks.Checker, "XSD_AHEAD", xsd_ahead)
        prepared = prepare_area(AREA, run_id="run-1", period_end=PERIOD_END, settings=settings)
        assert len(prepared["batches"]) >= 10
        results[process] = outcome(settings, prepared)
    assert results["on"] == results["off"]
