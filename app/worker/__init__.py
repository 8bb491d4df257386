"""``python -m app.worker``: the entry point of a local worker process (the executor itself
is :mod:`app.executors.local`)."""
