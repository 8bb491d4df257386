"""Executors: what both the local lease runner (``app.worker``) and Celery workers share
(:mod:`app.executors.lease`), and the Celery executor itself."""
