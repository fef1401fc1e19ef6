"""JSON numbers exactly as they were written.

In FHIR a decimal's written digits carry meaning: `1.50` is a lab value known to two
places, `1.5` to one, and `66.899999999999991` is not `66.89999999999999`. Python's JSON
reads both as the same float and writes it back its own way. So every FHIR JSON the
platform reads (request bodies, loaded files, stored resources) gives each number with a
fraction or an exponent as an ExactFloat: a float for every computation (validation,
search values, comparisons) that keeps the digits it was written with, and every JSON
the platform writes (responses, storage) writes those digits again.

PostgreSQL's jsonb keeps a number's digits and scale (`1.50` stays `1.50`) but spells an
exponent out (`1.50e1` is stored as `15.0`); an ExactFloat spells it out the same way
when it is read (`1E+2` as the integer 100), so that what a write answers and what a
later read answers agree.
Integers need nothing: Python's int is exact.
"""

import json
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson


class ExactFloat(float):
    """A JSON number with a fraction or an exponent, and the digits it was written with."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> "ExactFloat":
        number = super().__new__(cls, text)
        if "e" in text or "E" in text:
            text = format(Decimal(text), "f")  # as jsonb spells it
        number.text = text
        return number

    def __reduce__(self) -> tuple[type["ExactFloat"], tuple[str]]:
        # copy.deepcopy (a JSON Patch applied to a copy) and pickle keep the digits.
        return (ExactFloat, (self.text,))


def exact_float(text: str) -> ExactFloat | int:
    """`parse_float` of the platform's JSON readers; a number past float's range (1e400)
    is refused, as no JSON consumer could read it back. An exponent that spells out a
    whole number (`1E+2`) is that integer, as jsonb stores it."""
    number = ExactFloat(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:100]} is out of range")
    return number if "." in number.text else int(number.text)


def exact_loads(text: str | bytes) -> Any:
    """JSON the platform wrote itself (stored resources), its numbers exact."""
    return json.loads(text, parse_float=exact_float)


class ExactJSONDecoder(json.JSONDecoder):
    """What the resource tables' JSON fields read their content with."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **(kwargs | {"parse_float": exact_float}))


def exact_fragment(value: Any) -> orjson.Fragment:
    """orjson's `default` for an ExactFloat: its digits, as they are (orjson leaves float
    subclasses to `default`)."""
    if isinstance(value, ExactFloat):
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# orjson writes integers of at most 64 bits; JSON (and a client) may hold longer ones.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _long_ints_as_fragments(value: Any) -> Any:
    """`value` with every integer orjson would refuse as a fragment of its digits, for a
    second try at writing it (what else it holds is kept as it is)."""
    if isinstance(value, dict):
        return {key: _long_ints_as_fragments(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_long_ints_as_fragments(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        return orjson.Fragment(str(value))
    return value


def exact_dumps(
    value: Any,
    *,
    sort_keys: bool = False,
    default: Callable[[Any], Any] = exact_fragment,
    option: int = 0,
) -> bytes:
    """JSON with its numbers exact, for storage (the jsonb of a resource and its version),
    fingerprints (`sort_keys`) and answers (http.json_render, with its own `default` and
    `option`). An integer past 64 bits, which orjson refuses, goes as its digits on a
    second try, never rounded."""
    option |= orjson.OPT_SORT_KEYS if sort_keys else 0
    try:
        return orjson.dumps(value, default=default, option=option)
    except orjson.JSONEncodeError:
        return orjson.dumps(_long_ints_as_fragments(value), default=default, option=option)
