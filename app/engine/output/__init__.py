"""Writing the output: streamed safetensors (one file or shards), torch files, atomically.

``files`` publishes atomically; ``digests`` copies unchanged bytes without torch and digests
them on a second thread; ``safetensors_writer`` and ``torch_writer`` lay the formats out;
``execution`` is what a write returns. :func:`app.engine.write.execute_plan` drives them.
This package's own namespace stays light (stdlib only): the storage layer imports
:func:`fsync_dir` from it.
"""

from app.engine.output.execution import DIGEST_PLACEHOLDER, Execution
from app.engine.output.files import atomic_output, fsync_dir

__all__ = ["DIGEST_PLACEHOLDER", "Execution", "atomic_output", "fsync_dir"]
