"""Evaluate search parameter expressions on a resource and turn the results into typed values.

Expressions are compiled once per (type, expression) with fhirpathpy's R4 model (it knows
the choice types, so `Observation.effective` finds `effectiveDateTime`). Before
evaluating, a parameter whose expression reads a top-level element the resource does
not have is skipped: that is most of them, and it is the bulk of the indexing cost.
The typed values and their converters are in values.py.
"""

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from fhirplatform.fhir.search.registry import (
    BASE_TYPE,
    ParamType,
    SearchParameter,
    SearchPath,
    indexed_parameters_for,
)
from fhirplatform.fhir.search.values import VALUE_CONVERTERS, Value, reference_values
from fhirplatform.resource_types import TYPE_CHARS

logger = logging.getLogger(__name__)
_STEM = re.compile(r"^([a-z][a-z0-9]*)[A-Z]")


@cache
def _compiled(resource_type: str, expression: str) -> Callable[..., list[Any]]:
    # fhirpathpy does not treat a concrete type as `Resource`; name the type instead.
    if expression.startswith(f"{BASE_TYPE}."):
        expression = resource_type + expression[len(BASE_TYPE) :]
    return fhirpathpy.compile(expression, fhirpath_models["r4"])


_SIMPLE_PATH = re.compile(rf"^({TYPE_CHARS})((?:\.[a-z][A-Za-z0-9]*)+)$")
_SIMPLE_CAST = re.compile(rf"^\(({TYPE_CHARS})\.([a-z][A-Za-z0-9]*) as ([A-Za-z]+)\)$")


# Suffixes of choice-type elements (`value[x]` → `valueQuantity`): the FHIR data types.
CHOICE_SUFFIXES = frozenset(
    [
        "Boolean",
        "Integer",
        "String",
        "Decimal",
        "Uri",
        "Url",
        "Canonical",
        "Base64Binary",
        "Instant",
        "Date",
        "DateTime",
        "Time",
        "Code",
        "Oid",
        "Id",
        "Markdown",
        "UnsignedInt",
        "PositiveInt",
        "Uuid",
        "Address",
        "Age",
        "Annotation",
        "Attachment",
        "CodeableConcept",
        "Coding",
        "ContactPoint",
        "Count",
        "Distance",
        "Duration",
        "HumanName",
        "Identifier",
        "Money",
        "Period",
        "Quantity",
        "Range",
        "Ratio",
        "Reference",
        "SampledData",
        "Signature",
        "Timing",
        "ContactDetail",
        "Contributor",
        "DataRequirement",
        "Expression",
        "ParameterDefinition",
        "RelatedArtifact",
        "TriggerDefinition",
        "UsageContext",
        "Dosage",
        "Meta",
    ]
)


def _choice(item: dict[str, Any], name: str) -> Any:
    for key, value in item.items():
        if key.startswith(name) and key[len(name) :] in CHOICE_SUFFIXES:
            return value
    return None


def _children(items: list[Any], name: str) -> list[Any]:
    """One FHIRPath navigation step over JSON: lists flatten, choice types match by stem."""
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        child = item.get(name)
        if child is None:
            child = _choice(item, name)
        if child is None:
            continue
        out.extend(child if isinstance(child, list) else [child])
    return out


def _direct(resource_type: str, expression: str) -> Callable[[dict[str, Any]], list[Any]] | None:
    """Plain navigation (`Patient.name.given`, `(Observation.value as Quantity)`) evaluated
    on the JSON directly: the same result as fhirpathpy at a fraction of the cost. Most
    registry expressions have this shape; anything else goes to fhirpathpy."""
    if expression.startswith(f"{BASE_TYPE}."):
        expression = resource_type + expression[len(BASE_TYPE) :]
    cast = _SIMPLE_CAST.match(expression)
    if cast and cast.group(1) == resource_type:
        key = cast.group(2) + cast.group(3)[0].upper() + cast.group(3)[1:]

        def evaluate_cast(content: dict[str, Any]) -> list[Any]:
            value = content.get(key)
            return [] if value is None else value if isinstance(value, list) else [value]

        return evaluate_cast
    simple = _SIMPLE_PATH.match(expression)
    if simple and simple.group(1) == resource_type:
        steps = simple.group(2).split(".")[1:]

        def evaluate_path(content: dict[str, Any]) -> list[Any]:
            items: list[Any] = [content]
            for step in steps:
                items = _children(items, step)
            return items

        return evaluate_path
    return None


@dataclass(frozen=True)
class _Step:
    parameter: SearchParameter
    path: SearchPath
    required_key: str | None  # `(X.value as Quantity)` needs `valueQuantity`
    evaluate: Callable[[dict[str, Any]], list[Any]]


@cache
def _plan(resource_type: str) -> tuple[_Step, ...]:
    steps = []
    for parameter in indexed_parameters_for(resource_type):
        for path in parameter.paths:
            cast = _SIMPLE_CAST.match(path.expression)
            required = None
            if cast:
                required = cast.group(2) + cast.group(3)[0].upper() + cast.group(3)[1:]
            evaluate = _direct(resource_type, path.expression) or _compiled(
                resource_type, path.expression
            )
            steps.append(_Step(parameter, path, required, evaluate))
    return tuple(steps)


def _stems(content: dict[str, Any]) -> set[str]:
    """Top-level element names, with choice-type stems (`valueQuantity` → `value`)."""
    stems = set(content)
    for key in content:
        match = _STEM.match(key)
        if match:
            stems.add(match.group(1))
    return stems


def resource_values(
    *, resource_type: str, content: dict[str, Any]
) -> Iterator[tuple[SearchParameter, Value]]:
    """Every (parameter, value) pair the registry's expressions extract from `content`."""
    stems = _stems(content)
    evaluated: dict[str, list[Any]] = {}
    for step in _plan(resource_type):
        parameter, path = step.parameter, step.path
        if path.root is not None and path.root not in stems:
            continue
        if step.required_key is not None and step.required_key not in content:
            continue
        try:
            # Several parameters share an expression (code / combo-code); evaluate it once.
            results = evaluated.get(path.expression)
            if results is None:
                results = evaluated[path.expression] = step.evaluate(content)
        except Exception:  # an expression the evaluator cannot run indexes nothing
            logger.debug("search expression failed: %s", path.expression, exc_info=True)
            continue
        seen: set[Value] = set()
        for result in results:
            if parameter.type is ParamType.REFERENCE:
                values: Iterator[Value] = reference_values(result, path.resolve_type)
            else:
                values = VALUE_CONVERTERS[parameter.type](result)
            for value in values:
                if value not in seen:
                    seen.add(value)
                    yield parameter, value
