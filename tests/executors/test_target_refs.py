"""A job's target checkpoints are read by the ids its target names (review finding: each
reference was read through the job's single foreign key)."""

from __future__ import annotations

from app.db.repositories import CheckpointRepository, JobRepository
from app.services.checkpoints import checkpoint_files
from app.services.jobs.execution import _load
from tests.executors.test_failover import Setup, setup  # noqa: F401 (the fixture)
from tests.executors.test_local import _job


def test_each_target_reference_is_read_by_its_own_id(setup: Setup) -> None:  # noqa: F811
    db, _store, source, target = setup
    job_id = _job(db, source, target)
    with db.transaction() as session:
        job = JobRepository(session).get(job_id)
        assert job is not None
        job.target_checkpoint_id = source  # the key names another checkpoint than the spec
    with db.transaction(write=False) as session:
        named = CheckpointRepository(session).get(target)
        assert named is not None
        expected = checkpoint_files(named)
    assert _load(db, job_id).target_files == expected
