from collections.abc import Iterator
from typing import Any

import pytest

from tests.fhir.export.export_support import ExportWorld, export_world


@pytest.fixture(scope="module")
def export(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ExportWorld]:
    """A tenant of the module's own with generated data; its exports run on the session's
    real Celery worker."""
    with django_db_blocker.unblock():
        yield export_world()


@pytest.fixture(autouse=True)
def _no_background_event_writes(settings: Any) -> None:
    # Kick-offs in quick succession pass the count-only plan's export bucket (counted,
    # never refused): their throttle events must not be written by a thread that outlives
    # the test's database access.
    settings.LIMITS_EVENTS_BACKGROUND_FLUSH = False


@pytest.fixture
def live(export: ExportWorld, committed: None, celery_worker_process: Any) -> ExportWorld:
    return export
