"""Airflow side of the AMS reporting pipeline: hooks for the source and the receiver, task glue, callbacks."""
