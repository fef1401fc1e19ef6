"""A gunicorn worker killed (SIGKILL) while it writes leaves, for every write, the resource
and its audit event, or neither: they commit in one transaction.

Creates are sent from several threads while the server's worker is killed again and
again (its master starts another). Afterwards every Observation of the run has its
`create` event naming it, and every recorded create's Observation exists."""

import os
import random
import signal
import threading
import time
import uuid

import pytest
import requests

from audit.models import AuditEvent
from fhirplatform.fhir.models import Resource
from fhirplatform.schemas import tenant_schema
from scripts.loopback import gunicorn_server
from tests.conftest import test_environment as subprocess_environment
from tests.consent.enforcement_support import ConsentWorld
from tests.fhir.rest_support import FHIR_JSON

KILLS = 6


def _workers(master: int) -> list[int]:
    """The master's children (its workers), from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                children.append(int(entry))
    return children


@pytest.mark.usefixtures("committed")
def test_a_killed_worker_leaves_each_write_with_its_event_or_neither(world: ConsentWorld):
    world.policy()
    run = uuid.uuid4().hex[:10]
    token = world.writer.token
    patient = world.created({"resourceType": "Patient", "name": [{"family": "Killed"}]})
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient['id']}"},
        "identifier": [{"system": "urn:test:killed", "value": run}],
    }
    answered: list[int] = []
    stop = threading.Event()

    with gunicorn_server(env=subprocess_environment(), workers=1, threads=4) as server:
        url = f"{server.url}/fhir/{world.tenant.slug}/Observation"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}

        def write() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        answered.append(
                            session.post(url, json=body, headers=headers, timeout=10).status_code
                        )
                    except requests.RequestException:
                        answered.append(0)  # the worker died under this request

        threads = [threading.Thread(target=write) for _ in range(4)]
        for thread in threads:
            thread.start()
        kills = 0
        try:
            while kills < KILLS:
                time.sleep(random.uniform(0.3, 0.8))
                for pid in _workers(server.pid):
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
        finally:
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join(20)

    with tenant_schema(world.tenant):  # the module's own tenant: only this test writes here
        stored = set(
            Resource.objects.filter(
                resource_type="Observation", content__identifier__0__value=run
            ).values_list("logical_id", flat=True)
        )
        recorded = set(
            AuditEvent.objects.filter(
                interaction="create", resource_type="Observation", status=201
            ).values_list("resource_id", flat=True)
        )
    cut = answered.count(0)
    print(f"\n{len(stored)} stored, {answered.count(201)} answered 201, {cut} cut by a kill")
    assert kills >= KILLS and answered.count(201) > 0 and cut > 0, (kills, cut)
    # Every stored write has its event, and every recorded write was stored.
    assert recorded == stored, (len(recorded), len(stored))
