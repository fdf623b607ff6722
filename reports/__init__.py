"""What operators and analysts read: the run summary, the HTML pages and their plots (no Airflow import)."""
