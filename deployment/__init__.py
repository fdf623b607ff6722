"""Deployments of the pipeline made of processes on this machine (no Airflow import here)."""
