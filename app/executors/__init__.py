"""Executors: everything that runs jobs.

- :mod:`app.executors.runtime`: the one :class:`JobRuntime` every executor runs jobs with.
- :mod:`app.executors.lease`: holding a claimed job (heartbeat, cancel, finish under the lease).
- :mod:`app.executors.local`: worker processes that claim from the database (``graft serve``,
  ``graft worker``).
- :mod:`app.executors.celery`: the Celery executor (dispatcher, task, worker).
- :mod:`app.executors.hooks`: stage hooks a process may install (the tests pause jobs).
"""
