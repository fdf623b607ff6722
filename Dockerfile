# Production image: Airflow 3.3 with the project and its pinned dependencies.
FROM apache/airflow:3.3.2-python3.11
USER root
RUN apt-get update && apt-get install -y --no-install-recommends libxmlsec1 libxmlsec1-openssl \
    && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --chown=airflow:root pyproject.toml constraints.txt README.md /opt/ams/
COPY --chown=airflow:root transforms /opt/ams/transforms
COPY --chown=airflow:root expectations /opt/ams/expectations
COPY --chown=airflow:root delivery /opt/ams/delivery
COPY --chown=airflow:root receiver /opt/ams/receiver
COPY --chown=airflow:root reference /opt/ams/reference
COPY --chown=airflow:root schemas /opt/ams/schemas
COPY --chown=airflow:root sql /opt/ams/sql
RUN pip install --no-cache-dir -c /opt/ams/constraints.txt -e /opt/ams
