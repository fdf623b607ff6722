"""The inline SVG plots of the analysts' pages (reports.plots): numbers in the right places."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from reports import plots

SVG = "{http://www.w3.org/2000/svg}"


def _parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup).replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


def test_ticks_are_whole_numbers_from_zero_past_the_top():
    assert plots._ticks(0) == [0, 1]
    assert plots._ticks(2) == [0, 1, 2]
    assert plots._ticks(10) == [0, 5, 10]
    assert plots._ticks(11) == [0, 5, 10, 15]
    assert plots._ticks(1234) == [0, 500, 1000, 1500]


def test_line_chart_draws_each_series_with_a_gap_where_a_run_has_no_value():
    chart = plots.line_chart([("area 1", [4, None, 2, 3]), ("area 2", [0, 1, 1, 1])], ["a", "b", "c", "d"],
                             what="quarantine", y_label="records", dashed={"area 2"})
    svg = _parse(chart)
    assert svg.get("aria-label") == "quarantine" and "<script" not in chart
    paths = {p.get("data-series"): p for p in svg.iter(f"{SVG}path")}
    assert paths["area 1"].get("d").count("M") == 2  # the gap at "b" starts a new stretch
    assert paths["area 2"].get("stroke-dasharray") and not paths["area 1"].get("stroke-dasharray")
    tips = [t.text for c in svg.iter(f"{SVG}circle") for t in c]
    assert tips[:3] == ["area 1, a: 4", "area 1, c: 2", "area 1, d: 3"] and len(tips) == 7
    legend = [t.text for t in svg.iter(f"{SVG}text") if t.text and t.text.startswith("area")]
    assert legend == ["area 1: 3", "area 2: 1"]
    # higher values are drawn higher: the y of "a" (4) is above the y of "c" (2)
    ys = [float(c.get("cy")) for c in svg.iter(f"{SVG}circle")][:2]
    assert ys[0] < ys[1]


def test_bar_chart_shows_every_bucket_with_its_count():
    chart = plots.bar_chart([("same day", 3), ("1 day", 0), ("over 30 days", 7)], what="release", y_label="n")
    svg = _parse(chart)
    bars = {r.get("data-bucket"): float(r.get("height")) for r in svg.iter(f"{SVG}rect") if r.get("data-bucket")}
    assert bars["1 day"] == 0 and 0 < bars["same day"] < bars["over 30 days"]
    assert re.search(r">7</text>", chart) and re.search(r">same day</text>", chart)
