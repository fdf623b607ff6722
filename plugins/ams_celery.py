"""Celery configuration of the pipeline's workers ([celery] celery_config_options = ams_celery.CELERY_CONFIG).

Airflow's defaults, plus one thing: a worker imports the libraries every `prepare` needs (pandas,
pandera, Great Expectations, the pipeline) once, when it starts. Each task runs in a process forked
from the worker, so it finds them loaded instead of importing them again: Great Expectations alone
takes 4-10 s to import on a small machine, more than a small area's whole work.
(The scheduler and the API server read this module too; the preload runs in workers only.)
"""

from __future__ import annotations

import logging

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

log = logging.getLogger(__name__)

CELERY_CONFIG = dict(DEFAULT_CELERY_CONFIG)


@worker_init.connect
def preload(**_: object) -> None:
    try:
        import great_expectations  # noqa: F401
        import pandas  # noqa: F401
        import pandera.pandas  # noqa: F401

        import cycle.pipeline  # noqa: F401
        import expectations.runner  # noqa: F401
    except Exception as exc:  # a worker without them still runs tasks (they import what they need)
        log.warning("could not preload the pipeline's libraries: %s", exc)
