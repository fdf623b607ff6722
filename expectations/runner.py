"""Run an area's quality suite on a records frame: row-level findings, statistics and Data Docs.

Great Expectations sees only the masked validation frame (expectations.checks), indexed by
`record_key`, and returns the keys of failing rows (result format COMPLETE without values). With a
`data_docs_dir`, a file data context in `<data_docs_dir>/gx` keeps suites and results and builds the
Data Docs site into `<data_docs_dir>` (index.html) after every run, with its CDN assets replaced by
the project's copies (expectations.data_docs); without one, an in-memory
context does the validation alone. Contexts and suites are cached per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from great_expectations.core.run_identifier import RunIdentifier  # noqa: E402
from great_expectations.data_context import AbstractDataContext  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from great_expectations.datasource.fluent import PandasDatasource  # noqa: E402
from great_expectations.validator.v1_validator import Validator  # noqa: E402

from expectations.checks import LIST_SEP, Check, area_checks, prepare_frame  # noqa: E402
from expectations.data_docs import localise  # noqa: E402
from expectations.suites import build_suite, fingerprint, suite_name  # noqa: E402
from transforms.registry import Area, get_area  # noqa: E402
from transforms.rules import ERROR, severity  # noqa: E402

log = logging.getLogger(__name__)

FINDING_COLUMNS = ["record_key", "rule", "field", "paragraph", "severity", "message"]
STATISTIC_COLUMNS = ["rule", "field", "column", "expectation", "severity", "evaluated", "unexpected", "success"]
#: Every failing row's key, and no values: the frame is masked anyway, this keeps results small.
RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": ["record_key"],
    "exclude_unexpected_values": True,
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
SITE = "local_site"
DATASOURCE = "ams_masked_records"
BATCH = "whole_frame"


class QualityError(RuntimeError):
    """An expectation could not be evaluated (not a data finding: a fault to fix)."""


@dataclass(frozen=True)
class QualityResult:
    area: str
    run_id: str
    rows: int  # rows validated (ANNUL rows are not)
    findings: pd.DataFrame  # FINDING_COLUMNS: the findings frame of docs/architecture.md
    statistics: pd.DataFrame  # STATISTIC_COLUMNS: one row per expectation
    docs_index: Path | None  # the Data Docs index.html, when built

    @property
    def error_keys(self) -> set[str]:
        """Record keys with at least one error finding: the rows to quarantine."""
        return set(self.findings.loc[self.findings["severity"] == ERROR, "record_key"])


class _Project:
    """A GX context with, per area, the suite, a validation definition and (for Data Docs) a checkpoint."""

    def __init__(self, docs_dir: Path | None) -> None:
        self.docs_dir = docs_dir
        self.lock = threading.RLock()
        self.targets: dict[str, tuple[tuple, gx.ValidationDefinition | gx.Checkpoint]] = {}
        self.context: AbstractDataContext
        if docs_dir is None:
            self.context = gx.get_context(mode="ephemeral")
            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
            return
        docs_dir.mkdir(parents=True, exist_ok=True)
        with self.file_lock():
            self.context = gx.get_context(mode="file", project_root_dir=str(docs_dir))  # -> docs_dir/gx
            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
            self.context.variables.data_docs_sites = {
                SITE: {
                    "class_name": "SiteBuilder",
                    "show_how_to_buttons": False,
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                }
            }
            self.context.variables.save()

    @contextlib.contextmanager
    def file_lock(self) -> Iterator[None]:
        """Several worker processes may share a docs folder: one writer at a time."""
        if self.docs_dir is None:
            yield
            return
        with open(self.docs_dir / ".gx.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def target(self, area: Area) -> gx.ValidationDefinition | gx.Checkpoint:
        """The area's validation definition (or checkpoint), rebuilt when its suite changes."""
        current = fingerprint(area)
        cached = self.targets.get(area.code)
        if cached and cached[0] == current:
            return cached[1]
        ctx, name = self.context, suite_name(area)
        try:
            source = cast(PandasDatasource, ctx.data_sources.get(DATASOURCE))
        except KeyError:
            source = ctx.data_sources.add_pandas(DATASOURCE)
        asset = source.get_asset(name) if name in source.get_asset_names() else source.add_dataframe_asset(name)
        try:
            batch = asset.get_batch_definition(BATCH)
        except KeyError:
            batch = asset.add_batch_definition_whole_dataframe(BATCH)
        suite = ctx.suites.add_or_update(build_suite(area))
        definition = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        target: gx.ValidationDefinition | gx.Checkpoint = definition
        if self.docs_dir is not None:
            target = ctx.checkpoints.add_or_update(gx.Checkpoint(
                name=name, validation_definitions=[definition], result_format=RESULT_FORMAT,
                actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[SITE])]))
        self.targets[area.code] = (current, target)
        return target

    def validate(self, area: Area, frame: pd.DataFrame, run_name: str):
        with self.lock:
            try:
                return self._validate(area, frame, run_name)
            finally:
                self._release()

    def _release(self) -> None:
        """Drop what the datasource's execution engine keeps of the last validation: the frame and every
        expectation's per-row results (300 MiB for a chunk of 100,000). Nothing reads them again (the next
        validation computes its own), but they lived on into the next chunk, beside its frames: the task's
        peak grew from one chunk to two."""
        engine = cast(PandasDatasource, self.context.data_sources.get(DATASOURCE)).get_execution_engine()
        # GX has no public way to empty these (reset_batch_cache leaves the frame in batch_data_cache)
        for cache in (getattr(engine, "_metric_cache", None), engine.batch_manager.batch_data_cache):
            if isinstance(cache, dict):
                cache.clear()
        engine.batch_manager.reset_batch_cache()

    def _validate(self, area: Area, frame: pd.DataFrame, run_name: str):
        run = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
        with self.file_lock():
            target = self.target(area)
            if isinstance(target, gx.Checkpoint):
                started = time.time()
                outcome = target.run(batch_parameters={"dataframe": frame}, run_id=run)
                (result,) = outcome.run_results.values()
                localise(cast(Path, self.docs_dir), since=started)  # the pages GX just wrote load nothing external
                return result
            # Without Data Docs nothing reads a stored result: the suite is validated as
            # ValidationDefinition.run does it, without serialising the result (every failing row's key)
            # into the ephemeral context's in-memory store, which took more time than the validation and
            # kept every chunk's result for the life of the process.
            validator = Validator(batch_definition=target.batch_definition,
                                  batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)
            return validator.validate_expectation_suite(target.suite)


_PROJECTS: dict[Path | None, _Project] = {}
_PROJECTS_LOCK = threading.Lock()


def _project(docs_dir: Path | None) -> _Project:
    key = None if docs_dir is None else Path(docs_dir).resolve()
    with _PROJECTS_LOCK:
        if key not in _PROJECTS:
            _PROJECTS[key] = _Project(key)
        return _PROJECTS[key]


# --- results -> findings ----------------------------------------------------------------------------


def _show(value: object) -> str:
    if value is None or (not isinstance(value, (str, tuple, list)) and pd.isna(value)):
        return "(none)"
    if isinstance(value, (date, pd.Timestamp)):
        return value.isoformat()[:10]
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def _raised(info: dict | None) -> str | None:
    """The exception message of an expectation that could not run, if any."""
    if not info:
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info["raised_exception"] else None
    for sub in info.values():
        if isinstance(sub, dict) and sub.get("raised_exception"):
            return str(sub.get("exception_message"))
    return None


def _unexpected_keys(result: dict) -> list[str]:
    keys: list[str] = []
    for item in result.get("unexpected_index_list") or []:
        value: Any = item.get("record_key") if isinstance(item, dict) else item
        keys.extend(value if isinstance(value, list) else [value])
    return keys


def _messages(check: Check, rows: pd.DataFrame, keys: list[str], period_end: date) -> list[str]:
    """'<field> <masked value>: <problem> (<rule>, <paragraph>)' per failing row."""
    names = [n for _, n, _, _ in string.Formatter().parse(check.problem) if n and n != "period_end"]
    wanted = list(dict.fromkeys(c for c in (check.field, check.column, *names) if c in rows.columns))
    sub = rows.loc[keys, wanted]
    shown = [_show(v) for v in sub[check.field]] if check.field in sub else ["(none)"] * len(keys)
    if check.expect == "no_match" and check.cpr_status:  # cpr_list: only the persons with this status
        shown = [LIST_SEP.join(m for m, st in zip(masked.split(LIST_SEP), str(statuses).split(LIST_SEP), strict=False)
                               if st == check.cpr_status)
                 for masked, statuses in zip(shown, sub[check.column], strict=True)]
    values = {n: [_show(v) for v in sub[n]] for n in names}
    out = []
    for i, masked in enumerate(shown):
        problem = check.problem.format_map({**{n: v[i] for n, v in values.items()}, "period_end": period_end})
        out.append(f"{check.field} {masked}: {problem} ({check.rule}, {check.paragraph})")
    return out


def _statistic(check: Check, res, keys: list[str]) -> dict:
    outcome = res.result or {}
    evaluated = int(outcome.get("element_count", 0)) - int(outcome.get("missing_count") or 0)
    return {"rule": check.rule, "field": check.field, "column": check.column,
            "expectation": res.expectation_config.type, "severity": severity(check.rule), "evaluated": evaluated,
            "unexpected": int(outcome.get("unexpected_count", len(keys))), "success": bool(res.success)}


def run_quality(
    area: Area | int | str,
    records: pd.DataFrame,
    *,
    period_end: date,
    run_id: str,
    data_docs_dir: Path | None = None,
) -> QualityResult:
    """Validate an area's records frame with its quality suite; findings carry masked values only.

    `record_key` is the source key and expected to be unique in the frame. With `data_docs_dir` the
    Data Docs site there is updated (run name `<run_id>-<area code>`); `docs_index` is its index.html.
    Raises QualityError when an expectation cannot be evaluated.
    """
    area = area if isinstance(area, Area) else get_area(area)
    frame = prepare_frame(area, records, period_end=period_end)
    checks = area_checks(area)
    by_id = {c.id: c for c in checks}
    order = {c.id: i for i, c in enumerate(checks)}
    columns = list(dict.fromkeys(c.column for c in checks))
    validation_frame = frame[["record_key", *columns]].set_index("record_key")
    result = _project(data_docs_dir).validate(area, validation_frame, f"{run_id}-{area.code}")

    rows = frame.drop_duplicates("record_key").set_index("record_key")
    position = pd.Series(np.arange(len(rows)), index=rows.index)
    found: list[pd.DataFrame] = []
    statistics: list[dict] = []
    for res in sorted(result.results, key=lambda r: order[r.expectation_config.meta["check"]]):
        check = by_id[res.expectation_config.meta["check"]]
        raised = _raised(res.exception_info)
        if raised:
            raise QualityError(f"{area.code}: the expectation of {check.id} could not run: {raised}")
        keys = list(dict.fromkeys(_unexpected_keys(res.result or {})))
        statistics.append(_statistic(check, res, keys))
        if keys:
            found.append(pd.DataFrame({
                "record_key": keys, "rule": check.rule, "field": check.field, "paragraph": check.paragraph,
                "severity": severity(check.rule), "message": _messages(check, rows, keys, period_end),
                "_row": position.loc[keys].to_numpy(), "_check": order[check.id],
            }))
    if found:
        findings = pd.concat(found, ignore_index=True).sort_values(["_row", "_check"], kind="stable")
        findings = findings[FINDING_COLUMNS].reset_index(drop=True)
    else:
        findings = pd.DataFrame({c: pd.Series(dtype=object) for c in FINDING_COLUMNS})
    docs = Path(data_docs_dir) / "index.html" if data_docs_dir is not None else None
    log.info("%s run %s: %d rows checked, %d findings, %d rows with errors", area.code, run_id, len(frame),
             len(findings), findings.loc[findings["severity"] == ERROR, "record_key"].nunique())
    return QualityResult(area.code, run_id, len(frame), findings, pd.DataFrame(statistics, columns=STATISTIC_COLUMNS),
                         docs if docs is not None and docs.exists() else None)
