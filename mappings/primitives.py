"""The primitive types' checks for mappings/structure.py: each primitive's JSON type and regex
(https://hl7.org/fhir/R4/datatypes.html#primitive), strings' character rules (mappings/fhirtext.py), lists,
and for each check a twin that only tells whether the value is clean.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date
from typing import Any

from mappings import fhirtext

Errors = list[tuple[str, str]] | None  # (path relative to the checked value, message), None when clean
Check = Callable[[Any], Errors]
# Every check has a twin that only tells whether the value is clean: almost every value checked is, and
# answering that costs less than walking for errors (no paths, no error lists, known-good values skipped).
# Only a value found unclean is walked again by the checks above, which name its problems.
Clean = Callable[[Any], bool]

_DATE = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_MONTH_DAY = r"-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_ZONE = r"(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_PATTERNS = {
    "code": fhirtext.CODE,
    "id": fhirtext.ID,
    "uri": fhirtext.URI,
    "canonical": fhirtext.URI,
    "url": fhirtext.URI,
    "oid": r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+",
    "uuid": r"(urn:uuid:)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "base64Binary": r"(\s*([0-9a-zA-Z+/=]){4}\s*)+",
    "date": f"{_DATE}({_MONTH_DAY})?)?",
    "dateTime": f"{_DATE}({_MONTH_DAY}(T{_TIME}{_ZONE})?)?)?",
    "instant": f"{_DATE}{_MONTH_DAY}T{_TIME}{_ZONE})",
    "time": _TIME,
}
_DATES = {"date", "dateTime", "instant"}
_INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "unsignedInt": (0, 2**31 - 1), "positiveInt": (1, 2**31 - 1)}
_MAX_STRING = 1024 * 1024  # characters (https://hl7.org/fhir/R4/datatypes.html#string)
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _got(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a number")


def _real_date(text: str) -> bool:
    if len(text) < 10:
        return True  # a partial date: the regex has checked it
    try:
        date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def _plain_string(value: Any) -> Errors:
    if type(value) is not str:
        return [("", f"expected a string, got {_got(value)}")]
    if not value:
        return [("", "an empty string is not a valid string")]
    if len(value) > _MAX_STRING:
        return [("", f"a string of {len(value)} characters is over FHIR's {_MAX_STRING}")]
    problem = fhirtext.string_problem(value)
    return None if problem is None else [("", problem)]


_KNOWN_MAX = 4096  # good values remembered per kind of string

# Sufficient, never necessary, conditions for a good value, answered by str's own C methods: printable
# ASCII holds no control character, no surrogate and no whitespace but the space. What they do not vouch
# for (non-ASCII text, a tab) goes to the regexes, which decide. (`value.isascii() and value.isprintable()`
# is written out in each: a function of its own cost about as much again as the two.)


def _plain_string_clean(value: Any) -> bool:
    if (
        type(value) is str
        and value
        and len(value) <= _MAX_STRING
        and value.isascii()
        and value.isprintable()
        and not value.isspace()
    ):
        return True
    return _plain_string(value) is None


def _surely_uri(value: str) -> bool:
    return bool(value) and value.isascii() and value.isprintable() and " " not in value


def _surely_code(value: str) -> bool:
    return (
        bool(value)
        and value.isascii()
        and value.isprintable()
        and value[0] != " "
        and value[-1] != " "
        and "  " not in value
    )


_SURELY: dict[str, Callable[[str], bool]] = {
    "code": _surely_code,
    "uri": _surely_uri,
    "canonical": _surely_uri,
    "url": _surely_uri,
}


def _boolean_clean(value: Any) -> bool:
    return type(value) is bool


def _clean_of(check: Check) -> Clean:
    if check is _plain_string:
        return _plain_string_clean
    if check is _boolean:
        return _boolean_clean
    known = getattr(check, "known", None)
    if known is not None:  # a patterned string's check: what it found good is good
        surely = _SURELY.get(getattr(check, "kind", ""))
        if surely is not None:

            def clean_surely(value: Any) -> bool:
                return (type(value) is str and (value in known or surely(value))) or check(value) is None

            return clean_surely

        def clean_known(value: Any) -> bool:
            return (type(value) is str and value in known) or check(value) is None

        return clean_known

    def clean(value: Any) -> bool:
        return check(value) is None

    return clean


def _string_check(kind: str) -> Check:
    pattern = _PATTERNS.get(kind)
    if pattern is None:
        return _plain_string  # string, markdown, xhtml: any characters, but not none
    fullmatch = re.compile(pattern).fullmatch
    known: set[str] = set()  # values already found good: codes, systems and dates repeat a lot

    def check(value: Any) -> Errors:
        if type(value) is not str:
            return [("", f"expected a string ({kind}), got {_got(value)}")]
        if value in known:
            return None
        if not value:
            return [("", f"an empty string is not a valid {kind}")]
        if fullmatch(value) is None:
            return [("", f"{value[:40]!r} is not a valid {kind}")]
        if kind in _DATES and not _real_date(value):
            return [("", f"{value[:40]!r} is not a real date")]
        if len(known) < _KNOWN_MAX:
            known.add(value)
        return None

    check.known = known  # type: ignore[attr-defined]  # read by _clean_of
    check.kind = kind  # type: ignore[attr-defined]
    return check


def _boolean(value: Any) -> Errors:
    return None if type(value) is bool else [("", f"expected true or false, got {_got(value)}")]


def _decimal(value: Any) -> Errors:
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return None
    if type(value).__name__ == "Decimal" and value.is_finite():
        return None
    return [("", f"expected a finite JSON number (decimal), got {_got(value)}")]


def _integer_check(kind: str) -> Check:
    low, high = _INT_RANGES.get(kind, _INT_RANGES["integer"])

    def check(value: Any) -> Errors:
        if type(value) is not int:
            return [("", f"expected a JSON integer ({kind}), got {_got(value)}")]
        if not low <= value <= high:
            return [("", f"{value} is out of range for {kind}")]
        return None

    return check


def _comments(value: Any) -> Errors:
    if type(value) is str or (type(value) is list and all(type(v) is str for v in value)):
        return None
    return [("", "fhir_comments are a string or strings")]


def primitive_check(kind: str) -> Check:
    """Return the check of one value of a primitive type."""
    if kind == "boolean":
        return _boolean
    if kind == "decimal":
        return _decimal
    if kind in _INT_RANGES or kind == "integer64":
        return _integer_check(kind)
    if kind == "fhir_comments":
        return _comments
    return _string_check(kind)


def _list_check(item: Check, nullable: bool) -> Check:
    def check(value: Any) -> Errors:
        if type(value) is not list:
            return [("", f"expected an array, got {_got(value)}")]
        if not value:
            return [("", "an empty array is not valid FHIR JSON (leave the element out)")]
        errors = None
        for i, x in enumerate(value):
            if x is None:
                if nullable:
                    continue
                found: Errors = [("", "null is not allowed here")]
            else:
                found = item(x)
            if found:
                errors = (errors or []) + [(f"[{i}]{p}", m) for p, m in found]
        return errors

    return check


def _list_clean(item: Clean, nullable: bool) -> Clean:
    if nullable:

        def clean_nullable(value: Any) -> bool:
            if type(value) is not list or not value:
                return False
            for x in value:
                if x is not None and not item(x):
                    return False
            return True

        return clean_nullable

    def clean(value: Any) -> bool:
        if type(value) is not list or not value:
            return False
        for x in value:
            if x is None or not item(x):
                return False
        return True

    return clean
