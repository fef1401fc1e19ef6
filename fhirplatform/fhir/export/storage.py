"""Where export files live: the "exports" storage (settings.STORAGES), a folder by default,
an S3-compatible bucket when configured. Every name starts with the tenant's schema and
the job, so one tenant's files are never named under another's.

A file is written to a local temporary file first and handed to the storage whole (a
move on the same disk, an upload to a bucket): storage never holds a half-written file
under an output name.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages


def export_storage() -> Storage:
    return storages["exports"]


def job_prefix(*, schema: str, job_id: object) -> str:
    return f"{schema}/{job_id}/"


class _Finished(File):  # type: ignore[type-arg]
    """A finished temporary file: FileSystemStorage moves it into place instead of copying."""

    def temporary_file_path(self) -> str:
        return str(self.name)


@contextmanager
def file_writing() -> Iterator[IO[bytes]]:
    """A local temporary file to write one export file into; removed afterwards unless
    file_store moved it."""
    folder = Path(settings.EXPORT_DIR) / ".partial"
    folder.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=folder, suffix=".ndjson", delete=False)  # noqa: SIM115
    try:
        yield handle
    finally:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)


def file_store(handle: IO[bytes], storage_name: str) -> int:
    """Hand the written file to the storage under `storage_name` (replacing what a killed
    run left there); its size."""
    handle.flush()
    os.fsync(handle.fileno())
    size = handle.tell()
    storage = export_storage()
    storage.delete(storage_name)
    handle.seek(0)
    saved = storage.save(storage_name, _Finished(handle, name=handle.name))
    if saved != storage_name:
        raise RuntimeError(f"the export storage saved {storage_name} as {saved}")
    return size


def files_delete(*, schema: str, job_id: object, keep: frozenset[str] = frozenset()) -> int:
    """Delete the job's files in storage, but those named in `keep`; how many went."""
    storage = export_storage()
    prefix = job_prefix(schema=schema, job_id=job_id)
    try:
        _, names = storage.listdir(prefix)
    except FileNotFoundError:
        return 0
    gone = 0
    for name in names:
        if prefix + name not in keep:
            storage.delete(prefix + name)
            gone += 1
    return gone
