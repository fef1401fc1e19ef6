"""The purge: deletes a tenant's dead entries. Only a matter of memory, never of
correctness: a dead entry is unreachable from the moment its generation was bumped."""

from typing import cast

from fhirplatform.cache.keys import index_key, purge_marker_key
from fhirplatform.cache.link import link

BATCH = 500


def cache_purge_dead(*, tenant_schema: str) -> int:
    """Walk the tenant's key index: delete each entry filled under a generation that has
    changed since, and drop index members whose entry is gone (expired or deleted). Safe to
    run twice, and beside lookups and fills (each batch is one script: it deletes only what
    is dead when it runs). Returns how many index members were removed. Redis errors raise:
    the task fails visibly and the next bump queues another run."""
    client, scripts = link.connect()
    # Cleared first: a change made while this runs queues the next purge.
    client.delete(purge_marker_key(tenant_schema))
    index = index_key(tenant_schema)
    seconds, micros = client.time()  # Redis's clock: the one the scores were written by
    removed = int(client.zremrangebyscore(index, "-inf", seconds + micros / 1_000_000))
    cursor = 0
    while True:
        cursor, members = client.zscan(index, cursor, count=BATCH)
        keys = [cast(bytes, member) for member, _ in members]
        if keys:
            removed += int(scripts.purge_batch(keys=[index, *keys], client=client))
        if cursor == 0:
            return removed
