"""Read a source checkpoint safely, one module per format.

Formats: torch zip (``torch.save`` since 1.6), torch legacy (the pre-1.6 pickle stream),
safetensors, and Hugging Face sharded sets (``*.index.json`` + shards). Pickles are read by
:mod:`app.engine.readers.unpickler`, which allows less than ``torch.load(weights_only=True)``
and never executes anything; tensor bytes are read straight from the file, one tensor at a
time, and always land on the CPU (files saved from CUDA tensors open without a GPU). Nothing
here imports torch until a tensor's data is read.
"""

from app.engine.readers.opening import inspect_source, open_source
from app.engine.readers.remote import ReadAhead, RemoteBlob
from app.engine.readers.safetensors_file import SAFETENSORS_DTYPES
from app.engine.readers.several import NamedSources, SeveralSources, open_several
from app.engine.readers.source import WRAPPER_PREFIXES, Source, sha256_file, sha256_files

__all__ = [
    "SAFETENSORS_DTYPES",
    "WRAPPER_PREFIXES",
    "NamedSources",
    "ReadAhead",
    "RemoteBlob",
    "SeveralSources",
    "Source",
    "inspect_source",
    "open_several",
    "open_source",
    "sha256_file",
    "sha256_files",
]
