"""The reporting cycle of one area: settings, prepare, deliver, timings (no Airflow import)."""
