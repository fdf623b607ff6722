"""The `ams-report` command line: the demo, the UI launcher, summaries, archive tools, checks."""
