"""One Great Expectations suite per area, built from the registry and the rule catalogue.

Each expectation tests one column of the masked validation frame (expectations.checks) and carries
its rule in `meta`: rule id, field, paragraph and severity (transforms.rules.severity, so the
AMS_RULE_SEVERITY overrides apply). No `mostly`: every failing row is a finding.
"""

from __future__ import annotations

import logging
import os
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.expectations.metadata_types import FailureSeverity  # noqa: E402

from expectations.checks import Check, area_checks  # noqa: E402
from transforms.registry import Area  # noqa: E402
from transforms.rules import ERROR, RULE_BY_ID, severity  # noqa: E402

# GX logs at INFO (one module forces it, e.g. "Created temporary directory ... for ephemeral docs site"):
# keep it to warnings unless the deployment configured the logger itself.
if logging.getLogger("great_expectations").level == logging.NOTSET:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


def suite_name(area: Area) -> str:
    return f"{area.code}_{area.key}"


def expectation(check: Check, area: Area) -> gxe.Expectation:
    """The GX expectation of one check, tagged with its rule."""
    level = severity(check.rule)
    rule = RULE_BY_ID[check.rule]
    common: dict[str, Any] = {
        "column": check.column,
        "meta": {"area": area.code, "check": check.id, "rule": check.rule, "field": check.field,
                 "paragraph": check.paragraph, "severity": level},
        "notes": f"**{check.rule}** ({level}) - {check.field}, {check.paragraph}: {rule.title} (basis: {rule.basis}).",
        "severity": FailureSeverity.CRITICAL if level == ERROR else FailureSeverity.WARNING,
    }
    if check.expect == "true":
        return gxe.ExpectColumnValuesToBeInSet(value_set=[True], **common)
    if check.expect == "in":
        return gxe.ExpectColumnValuesToBeInSet(value_set=list(check.args), **common)
    if check.expect == "not_in":
        return gxe.ExpectColumnValuesToNotBeInSet(value_set=list(check.args), **common)
    if check.expect == "between":
        low, high = check.args
        return gxe.ExpectColumnValuesToBeBetween(min_value=low, max_value=high, **common)
    if check.expect == "null":
        return gxe.ExpectColumnValuesToBeNull(**common)
    if check.expect == "no_match":
        return gxe.ExpectColumnValuesToNotMatchRegex(regex=check.args[0], **common)
    raise ValueError(f"{check.id}: unknown expectation kind {check.expect!r}")


def build_suite(area: Area) -> gx.ExpectationSuite:
    """The area's suite (not yet added to a context)."""
    return gx.ExpectationSuite(
        name=suite_name(area),
        expectations=[expectation(check, area) for check in area_checks(area)],
        meta={"area": area.code, "title": area.title, "paragraph": area.paragraph,
              "notes": {"format": "markdown",
                        "content": [f"**{area.chapter}, {area.paragraph}**: {area.title}. Data-quality rules "
                                    "(engine 'quality') run on a masked copy of the records: no CPR number "
                                    "appears here, only its birth-date part (DDMMYY-****)."]}},
    )


def fingerprint(area: Area) -> tuple:
    """What the suite depends on: the checks and their current severities (config can change them)."""
    return tuple((check, severity(check.rule)) for check in area_checks(area))
