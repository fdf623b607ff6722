"""The data-quality layer: Great Expectations suites (engine 'quality' of transforms.rules) and Data Docs.

    from expectations.runner import run_quality
    result = run_quality(area, records, period_end=..., run_id=..., data_docs_dir=None)
    result.findings      # record_key, rule, field, paragraph, severity, message (masked CPR only)

`checks` builds the masked validation frame and the list of checks from the registry, `suites` turns
the checks into one ExpectationSuite per area, `runner` validates and returns row-level findings.
Great Expectations is imported by `suites` and `runner` only, so `import expectations` stays light.
No Airflow import here.
"""
