"""Writes to the versioned FHIR store of the current tenant schema: the FHIR app's one
write door (REST, Bundles, the bulk loader and the generator all write through here).

Every write is one statement that changes the current Resource row, appends a
ResourceVersion row and rebuilds the resource's search index rows, so a reader never sees
a version without its index. Writers to one resource serialise on its row lock
(select_for_update): the version number is read and bumped under the lock, so concurrent
updates never lose a write and If-Match is checked against the version really current.

A service runs in its caller's transaction (the request's, a Bundle's, a loader chunk's)
and opens one only when there is none: no savepoint of its own, whose SAVEPOINT and
RELEASE would cost two round trips a write. A failing write fails that transaction; a
caller that goes on after a failure (a batch Bundle's entry) holds a savepoint for it.

Each row also carries the resource's patient compartment and security labels (what
consent is decided on), written by the same statements, and every write records the
patients and type it touched for the caches (fhirplatform/fhir/changes.py).
"""

import copy
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jsonpatch
from django.conf import settings
from django.db import connection, transaction
from psycopg.types.json import Jsonb

from fhirplatform.db.locks import tenant_advisory_lock
from fhirplatform.errors import FhirError, IssueCode, not_found
from fhirplatform.fhir.changes import resource_changes_record
from fhirplatform.fhir.compartments import resource_patients, security_labels
from fhirplatform.fhir.models import Method, Resource, ResourceVersion
from fhirplatform.fhir.numbers import exact_dumps
from fhirplatform.fhir.representation import instant_text, now_instant, resource_gone
from fhirplatform.fhir.search.parsing import criteria_canonical
from fhirplatform.fhir.search.services import (
    index_resources,
    index_write_clauses,
    rows_copy,
)
from fhirplatform.fhir.validation import resource_type_check, resource_validate

# (resource_type, canonical criteria) -> the current resources matching them.
MatchFunction = Callable[[str, str], list[Resource]]
# (resource_type, canonical criteria, most) -> at most `most` + 1 current resources the
# caller's consent decision lets it see (selectors.resource_match with its guard).
VisibleMatchFunction = Callable[[str, str, int], list[Resource]]

# The most resources one conditional delete deletes, when several may be deleted at all
# (settings.FHIR_CONDITIONAL_DELETE_MULTIPLE); more matches are a 412.
CONDITIONAL_DELETE_MAX = 100

# The caller's transaction, or one of its own when there is none (see the module docstring).
_joins_the_transaction = transaction.atomic(savepoint=False)


@dataclass(frozen=True)
class WriteResult:
    resource: Resource
    created: bool  # a new resource (201) rather than an existing one


@dataclass
class PendingResource:
    """One validated resource for the bulk path: its type, final id and content."""

    resource_type: str
    logical_id: str
    content: dict[str, Any]


def new_logical_id() -> str:
    return str(uuid.uuid4())


def stamp(
    content: dict[str, Any],
    *,
    logical_id: str,
    version_id: int,
    last_updated: datetime,
    source: str,
) -> dict[str, Any]:
    """Set id and the server-owned meta elements; a client's meta.source is kept."""
    meta = dict(content.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = instant_text(last_updated)
    meta.setdefault("source", source)
    stamped = {"resourceType": content["resourceType"], "id": logical_id}
    stamped.update((key, value) for key, value in content.items() if key not in ("id", "meta"))
    stamped["meta"] = meta
    return stamped


def _table(model: type[Resource] | type[ResourceVersion]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _consent_columns_fill(resource: Resource) -> None:
    """Set the compartment and security labels of `resource` from its content."""
    resource.compartment = resource_patients(
        resource_type=resource.resource_type,
        logical_id=resource.logical_id,
        content=resource.content,
    )
    resource.security_labels = security_labels(resource.content)


def _version_write(resource: Resource, method: Method) -> None:
    """Write `resource` as it now is in one statement: its current row (inserted for a
    create, updated otherwise), its history row, and its search index rows.

    One statement is one round trip, and it is atomic by itself; each write service
    runs it after its checks, holding the row lock the checks took (update, patch,
    delete), so nothing it writes can disagree with what they read. The changes are
    recorded with the compartment before and after: a write that moves a resource from
    one patient to another touches both.
    """
    before = set() if method == Method.POST else set(resource.compartment)
    if not resource.deleted:
        _consent_columns_fill(resource)
    consent = [resource.compartment, resource.security_labels]
    columns = "resource_type, logical_id, version_id, last_updated"
    if method == Method.POST:
        current = (
            f"INSERT INTO {_table(Resource)} ({columns}, deleted, content, compartment, "
            "security_labels) SELECT %s, %s, %s, %s, false, content, %s, %s FROM doc"
        )
        current_params = [
            resource.resource_type,
            resource.logical_id,
            resource.version_id,
            resource.last_updated,
            *consent,
        ]
    else:
        # A delete keeps the last content, compartment and labels in the current row; its
        # history row has no content and takes the other two from the current row.
        current = (
            f"UPDATE {_table(Resource)} SET version_id = %s, last_updated = %s, deleted = %s"
            + ("" if resource.deleted else ", content = doc.content, compartment = %s")
            + ("" if resource.deleted else ", security_labels = %s")
            + " FROM doc WHERE id = %s"
        )
        current_params = [resource.version_id, resource.last_updated, resource.deleted]
        current_params += [] if resource.deleted else consent
        current_params.append(resource.pk)
    kept = f"{columns}, compartment, security_labels"
    clauses = [
        "doc AS (SELECT %s::jsonb AS content)",
        f"current_row AS ({current} RETURNING id, {kept})",
        f"version_row AS (INSERT INTO {_table(ResourceVersion)} (resource_id, {kept}, "
        f"method, content) SELECT current_row.id, {kept}, %s, doc.content "
        "FROM current_row, doc)",
    ]
    content = None if resource.deleted else Jsonb(resource.content, dumps=exact_dumps)
    params: list[Any] = [content, *current_params, str(method)]
    index_clauses, index_params = index_write_clauses(
        resource=resource, source="current_row", replace=method != Method.POST
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH {', '.join(clauses + index_clauses)} SELECT id FROM current_row",
            params + index_params,
        )
        row = cursor.fetchone()
    if row is None:
        raise RuntimeError(f"{resource} was not written")
    resource.pk = row[0]
    resource._state.adding = False
    resource_changes_record(
        resource_type=resource.resource_type, patients=before | set(resource.compartment)
    )


def _locked(resource_type: str, logical_id: str) -> Resource | None:
    return (
        Resource.objects.select_for_update()
        .filter(resource_type=resource_type, logical_id=logical_id)
        .first()
    )


def _check_if_match(resource: Resource, if_match: int | None) -> None:
    if if_match is not None and if_match != resource.version_id:
        raise FhirError(
            412,
            IssueCode.CONFLICT,
            f"Version conflict: If-Match names version {if_match}, "
            f"the current version is {resource.version_id}",
        )


def resource_create(
    *, resource_type: str, content: Any, source: str, logical_id: str | None = None
) -> Resource:
    """Create a resource with a server-assigned UUID (a client-sent id is ignored, as FHIR says).

    `logical_id` is for callers that assigned the UUID ahead (transaction Bundles resolving
    urn:uuid references), or update-as-create's client id, which `resource_put` checked
    and locked; never unchecked client input.
    """
    resource_type_check(resource_type)
    resource_validate(content=content, resource_type=resource_type)
    # One statement, atomic by itself: no transaction of its own is needed.
    logical_id = logical_id or new_logical_id()
    last_updated = now_instant()
    stored = stamp(
        content, logical_id=logical_id, version_id=1, last_updated=last_updated, source=source
    )
    resource = Resource(
        resource_type=resource_type,
        logical_id=logical_id,
        version_id=1,
        last_updated=last_updated,
        content=stored,
    )
    _version_write(resource, Method.POST)
    return resource


def _criteria_lock(*, resource_type: str, criteria: str) -> None:
    """Lock (tenant, type, canonical criteria): equivalent conditional writes serialise."""
    tenant_advisory_lock(f"{resource_type}?{criteria}")


def _new_id_lock(*, resource_type: str, logical_id: str) -> None:
    """Lock (tenant, type, id) before creating with a client's id: of two PUTs creating
    one new id, the second waits, then finds the first's row and updates it."""
    tenant_advisory_lock(f"{resource_type}/{logical_id}")


def resource_match_locked(
    *, resource_type: str, query: str, matches: MatchFunction
) -> list[Resource]:
    """The resources If-None-Exist criteria match, the criteria locked until the end of the
    surrounding transaction (which must then do the create, or not).

    The criteria are made canonical once (`criteria_canonical`), before locking and
    matching, so that two spellings of one condition take the same lock and two
    concurrent conditional creates with them make one resource. Several matches: 412.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("a conditional-create lock only holds inside a transaction")
    criteria = criteria_canonical(resource_type=resource_type, query=query)
    _criteria_lock(resource_type=resource_type, criteria=criteria)
    found = matches(resource_type, criteria)
    if len(found) > 1:
        raise FhirError(
            412, IssueCode.DUPLICATE, f"If-None-Exist '{criteria}' matches more than one resource"
        )
    return found


@_joins_the_transaction
def resource_create_conditional(
    *,
    resource_type: str,
    content: Any,
    source: str,
    matches: MatchFunction,
    query: str,
    logical_id: str | None = None,
) -> WriteResult:
    """If-None-Exist: create unless `query` matches; one match is returned, not created."""
    resource_type_check(resource_type)
    resource_validate(content=content, resource_type=resource_type)
    found = resource_match_locked(resource_type=resource_type, query=query, matches=matches)
    if found:
        return WriteResult(resource=found[0], created=False)
    resource = resource_create(
        resource_type=resource_type, content=content, source=source, logical_id=logical_id
    )
    return WriteResult(resource=resource, created=True)


@_joins_the_transaction
def resource_update(
    *, resource_type: str, logical_id: str, content: Any, source: str, if_match: int | None = None
) -> Resource:
    """Replace the current version. A deleted resource comes back with the next version number.

    Ids are server-assigned, so an update of an id that never existed is refused (405).
    """
    resource_type_check(resource_type)
    resource_validate(
        content=content, resource_type=resource_type, logical_id=logical_id, require_id=True
    )
    resource = _locked(resource_type, logical_id)
    if resource is None:
        raise FhirError(
            405,
            IssueCode.NOT_SUPPORTED,
            f"{resource_type}/{logical_id} does not exist; this server assigns ids, "
            "create resources with POST",
        )
    _check_if_match(resource, if_match)
    return _store_new_version(resource, content, Method.PUT, source)


def _update_create_refused(resource_type: str, logical_id: str) -> FhirError:
    # The answer a PUT to a missing id got before update-as-create existed, now saying why.
    return FhirError(
        405,
        IssueCode.NOT_SUPPORTED,
        f"{resource_type}/{logical_id} does not exist, and update-as-create is off for this "
        "tenant: create resources with POST",
    )


@_joins_the_transaction
def resource_put(
    *,
    resource_type: str,
    logical_id: str,
    content: Any,
    source: str,
    update_creates: bool,
    if_match: int | None = None,
) -> WriteResult:
    """PUT [base]/Type/id: update the resource, or create it with the client's id
    (update-as-create, when the tenant's `update_creates` allows it; 405 when not).

    The body's id, which validation holds to the URL's and to the FHIR id pattern, is the
    new resource's. A deleted resource is updated, and so comes back with the next version
    number. Two PUTs creating one new id serialise on a lock of that id: one creates (201),
    the other then finds the row and updates it (200). If-Match on an id that does not
    exist is a 412: it names a version that is not there.
    """
    resource_type_check(resource_type)
    resource_validate(
        content=content, resource_type=resource_type, logical_id=logical_id, require_id=True
    )
    resource = _locked(resource_type, logical_id)
    if resource is None:
        if not update_creates:
            raise _update_create_refused(resource_type, logical_id)
        _new_id_lock(resource_type=resource_type, logical_id=logical_id)
        resource = _locked(resource_type, logical_id)  # a concurrent creator's, committed
    if resource is None:
        if if_match is not None:
            raise FhirError(
                412,
                IssueCode.CONFLICT,
                f"Version conflict: If-Match names version {if_match} of "
                f"{resource_type}/{logical_id}, which does not exist",
            )
        created = resource_create(
            resource_type=resource_type, content=content, source=source, logical_id=logical_id
        )
        return WriteResult(resource=created, created=True)
    _check_if_match(resource, if_match)
    return WriteResult(_store_new_version(resource, content, Method.PUT, source), created=False)


def _version_next(resource: Resource) -> None:
    resource.version_id += 1
    # Never let lastUpdated go backwards (clock steps, ms truncation): history pages by it.
    resource.last_updated = max(now_instant(), resource.last_updated)


def _store_new_version(
    resource: Resource, content: dict[str, Any], method: Method, source: str
) -> Resource:
    _version_next(resource)
    resource.content = stamp(
        content,
        logical_id=resource.logical_id,
        version_id=resource.version_id,
        last_updated=resource.last_updated,
        source=source,
    )
    resource.deleted = False
    _version_write(resource, method)
    return resource


@_joins_the_transaction
def resource_patch(
    *, resource_type: str, logical_id: str, patch: Any, source: str, if_match: int | None = None
) -> Resource:
    """Apply a JSON Patch (RFC 6902) to the current version; the result is validated like an
    update and may not change resourceType or id."""
    resource_type_check(resource_type)
    if not isinstance(patch, list):
        raise FhirError(400, IssueCode.STRUCTURE, "A JSON Patch body is an array of operations")
    resource = _locked(resource_type, logical_id)
    if resource is None:
        raise not_found()
    if resource.deleted:
        raise resource_gone(resource)
    _check_if_match(resource, if_match)
    try:
        patched = jsonpatch.JsonPatch(patch).apply(copy.deepcopy(resource.content))
    except jsonpatch.JsonPatchTestFailed as exc:
        raise FhirError(422, IssueCode.PROCESSING, f"JSON Patch test failed: {exc}") from exc
    except (
        jsonpatch.JsonPatchException,
        jsonpatch.JsonPointerException,
        TypeError,
        KeyError,
        IndexError,
        ValueError,
    ) as exc:
        raise FhirError(422, IssueCode.PROCESSING, f"JSON Patch cannot be applied: {exc}") from exc
    resource_validate(
        content=patched, resource_type=resource_type, logical_id=logical_id, require_id=True
    )
    # The server owns versionId/lastUpdated; a patch touching them is overwritten, not obeyed.
    return _store_new_version(resource, patched, Method.PATCH, source)


@_joins_the_transaction
def resource_delete(
    *, resource_type: str, logical_id: str, if_match: int | None = None
) -> Resource:
    """Delete, keeping history: a DELETE version is appended and the index rows go.
    Deleting an already deleted resource changes nothing (idempotent)."""
    resource_type_check(resource_type)
    resource = _locked(resource_type, logical_id)
    if resource is None:
        raise not_found()
    _check_if_match(resource, if_match)
    if resource.deleted:
        return resource
    _version_next(resource)
    resource.deleted = True
    _version_write(resource, Method.DELETE)
    return resource


def _conditional_match(
    *, resource_type: str, query: Any, matches: VisibleMatchFunction, most: int, what: str
) -> list[Resource]:
    """The resources conditional criteria match for a conditional update, delete or patch,
    the criteria locked until the end of the surrounding transaction.

    The criteria go through the search parser (`criteria_canonical`: its 400 for what it
    refuses) and take the same advisory lock a conditional create takes, so equivalent
    conditional writes serialise and see each other's result. At most `most` + 1 are read.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("a conditional write's lock only holds inside a transaction")
    if not isinstance(query, str) or not query.strip().lstrip("?"):
        raise FhirError(
            400, IssueCode.INVALID, f"A conditional {what} needs search criteria in its URL"
        )
    criteria = criteria_canonical(resource_type=resource_type, query=query)
    _criteria_lock(resource_type=resource_type, criteria=criteria)
    return matches(resource_type, criteria, most)


def _too_many(what: str, resource_type: str, most: int) -> FhirError:
    many = "more than one resource" if most == 1 else f"more than {most} resources"
    return FhirError(
        412,
        IssueCode.DUPLICATE,
        f"Conditional {what}: the criteria match {many} of type {resource_type}; "
        "make them more selective",
    )


@_joins_the_transaction
def resource_update_conditional(
    *,
    resource_type: str,
    query: str,
    content: Any,
    source: str,
    matches: VisibleMatchFunction,
    update_creates: bool,
    if_match: int | None = None,
) -> WriteResult:
    """PUT [base]/Type?criteria (FHIR R4 http.html#cond-update).

    One match: it is updated (a body id must be the match's, else 400). No match: created,
    with a server id when the body has none, else with the body's id as update-as-create
    (the tenant's `update_creates`; an id that exists but does not match is a 409).
    Several matches: 412. Only resources the caller's consent decision lets it see match.
    """
    resource_type_check(resource_type)
    resource_validate(content=content, resource_type=resource_type)
    found = _conditional_match(
        resource_type=resource_type, query=query, matches=matches, most=1, what="update"
    )
    if len(found) > 1:
        raise _too_many("update", resource_type, 1)
    body_id = content.get("id")
    if found:
        match = found[0]
        if body_id is not None and body_id != match.logical_id:
            raise FhirError(
                400,
                IssueCode.INVALID,
                f"Body id '{str(body_id)[:80]}' is not the id of the resource the criteria "
                f"match ({resource_type}/{match.logical_id})",
                expression=[f"{resource_type}.id"],
            )
        logical_id = match.logical_id
    elif body_id is None:
        created = resource_create(resource_type=resource_type, content=content, source=source)
        return WriteResult(resource=created, created=True)
    else:
        logical_id = str(body_id)
        existing = _locked(resource_type, logical_id)
        if existing is not None and not existing.deleted:
            raise FhirError(
                409,
                IssueCode.CONFLICT,
                f"{resource_type}/{logical_id} exists but does not match the criteria; "
                "nothing was updated",
            )
    return resource_put(
        resource_type=resource_type,
        logical_id=logical_id,
        content=content | {"id": logical_id},
        source=source,
        update_creates=update_creates,
        if_match=if_match,
    )


@_joins_the_transaction
def resource_patch_conditional(
    *,
    resource_type: str,
    query: str,
    patch: Any,
    source: str,
    matches: VisibleMatchFunction,
    if_match: int | None = None,
) -> Resource:
    """PATCH [base]/Type?criteria (FHIR R4 http.html#patch): the one match is patched;
    no match 404, several 412. Only what the caller may see matches."""
    resource_type_check(resource_type)
    found = _conditional_match(
        resource_type=resource_type, query=query, matches=matches, most=1, what="patch"
    )
    if len(found) > 1:
        raise _too_many("patch", resource_type, 1)
    if not found:
        raise FhirError(
            404, IssueCode.NOT_FOUND, f"Conditional patch: no {resource_type} matches the criteria"
        )
    return resource_patch(
        resource_type=resource_type,
        logical_id=found[0].logical_id,
        patch=patch,
        source=source,
        if_match=if_match,
    )


@_joins_the_transaction
def resource_delete_conditional(
    *,
    resource_type: str,
    query: str,
    matches: VisibleMatchFunction,
    if_match: int | None = None,
) -> list[Resource]:
    """DELETE [base]/Type?criteria (FHIR R4 http.html#cond-delete): the matches deleted
    (none: nothing to do). Several matches are a 412 unless
    settings.FHIR_CONDITIONAL_DELETE_MULTIPLE, and then more than CONDITIONAL_DELETE_MAX
    are. Only what the caller may see matches; If-Match must name each match's version."""
    resource_type_check(resource_type)
    most = CONDITIONAL_DELETE_MAX if settings.FHIR_CONDITIONAL_DELETE_MULTIPLE else 1
    found = _conditional_match(
        resource_type=resource_type, query=query, matches=matches, most=most, what="delete"
    )
    if len(found) > most:
        raise _too_many("delete", resource_type, most)
    return [
        resource_delete(resource_type=resource_type, logical_id=match.logical_id, if_match=if_match)
        for match in found
    ]


def _copy_insert(rows: list[Resource]) -> None:
    """Insert new current rows and their first history rows with COPY.

    COPY streams rows to PostgreSQL instead of quoting every JSON document into one huge
    INSERT statement, which was a third of the loader's time. The ids are reserved from
    the table's own sequence first, so the index rows can point at them.
    """
    if not rows:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [Resource._meta.db_table, len(rows)],
        )
        for row, (pk,) in zip(rows, cursor.fetchall(), strict=True):
            row.pk = pk
            row._state.adding = False
    columns = ["resource_type", "logical_id", "version_id", "last_updated"]
    columns += ["compartment", "security_labels"]
    head = [(r.pk, *(getattr(r, column) for column in columns)) for r in rows]
    rows_copy(
        table=Resource._meta.db_table,
        columns=["id", *columns, "deleted", "content"],
        rows=[
            (*h, False, Jsonb(r.content, dumps=exact_dumps))
            for h, r in zip(head, rows, strict=True)
        ],
    )
    rows_copy(
        table=ResourceVersion._meta.db_table,
        columns=["resource_id", *columns, "method", "content"],
        rows=[
            (*h, str(Method.POST), Jsonb(r.content, dumps=exact_dumps))
            for h, r in zip(head, rows, strict=True)
        ],
    )


def resources_store(*, items: list[PendingResource], source: str) -> Counter[str]:
    """Store validated resources in bulk in the current schema and transaction (the
    loader's path): new ids are inserted with COPY, ids already stored get a new version
    through `resource_update`. Returns how many of each type were stored."""
    by_type: Counter[str] = Counter()
    keys = {(item.resource_type, item.logical_id) for item in items}
    existing: set[tuple[str, str]] = set()
    for resource_type in {key[0] for key in keys}:
        ids = [key[1] for key in keys if key[0] == resource_type]
        existing |= {
            (resource_type, logical_id)
            for logical_id in Resource.objects.filter(
                resource_type=resource_type, logical_id__in=ids
            ).values_list("logical_id", flat=True)
        }
    fresh: dict[tuple[str, str], Resource] = {}
    for item in items:
        key = (item.resource_type, item.logical_id)
        # The existence check and the insert share the chunk's transaction; the unique
        # (type, id) constraint still refuses a concurrent writer's duplicate.
        if key in existing:
            resource_update(
                resource_type=item.resource_type,
                logical_id=item.logical_id,
                content=item.content | {"id": item.logical_id},
                source=source,
            )
        else:
            last_updated = now_instant()
            # A repeated id inside one load keeps the last copy, like successive PUTs.
            fresh[key] = Resource(
                resource_type=item.resource_type,
                logical_id=item.logical_id,
                version_id=1,
                last_updated=last_updated,
                content=stamp(
                    item.content,
                    logical_id=item.logical_id,
                    version_id=1,
                    last_updated=last_updated,
                    source=source,
                ),
            )
        by_type[item.resource_type] += 1
    rows = list(fresh.values())
    touched: defaultdict[str, set[str]] = defaultdict(set)
    for row in rows:
        _consent_columns_fill(row)
        touched[row.resource_type].update(row.compartment)
    _copy_insert(rows)
    index_resources(resources=rows)
    # Told with the rest of the chunk's transaction, once it commits (changes.py).
    for resource_type, patients in touched.items():
        resource_changes_record(resource_type=resource_type, patients=patients)
    return by_type
