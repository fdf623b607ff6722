-- The pipeline's own state (ledger, quarantine, run counts) lives beside Airflow's metadata.
CREATE DATABASE ams_state OWNER airflow;
