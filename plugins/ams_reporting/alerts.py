"""One failure callback for every task: says which area and run failed and what to do."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def on_failure(context) -> None:
    ti = context.get("task_instance")
    run_id = context.get("run_id")
    exception = context.get("exception")
    log.error("AMS reporting failed: task %s (map index %s), run %s: %s. Runbook: docs/operations.md",
              getattr(ti, "task_id", "?"), getattr(ti, "map_index", "?"), run_id, exception)
