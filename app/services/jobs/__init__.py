"""Job use cases, from the request to the finished row.

- :mod:`.service`: create (validated), read, cancel, artifacts.
- :mod:`.dispatch`: with Celery, route a job to its queue and send it after commit.
- :mod:`.execution`: a claimed job's conversion, from its row to published artifacts.
- :mod:`.events`: status and progress events (SSE) and the webhooks a terminal status queues.
- :mod:`.document`: a job as clients see it (``GET /v1/jobs/{id}``, events, webhooks).
- :mod:`.maintenance`: lapsed leases and unreferenced blobs, on the API's timer.

Running jobs is the executors' business (:mod:`app.executors`).
"""
