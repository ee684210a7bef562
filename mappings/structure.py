"""Fast structural validation of FHIR R4 JSON, compiled once from element definitions.

The definitions (element names, types, cardinality, required elements, choice groups) are read
from fhir.resources' own R4B models by mappings/fhir.py; this module turns them into plain Python
checks, about ten times faster than building the pydantic models. It follows the JSON format
(https://hl7.org/fhir/R4/json.html) and the primitive types' regexes
(https://hl7.org/fhir/R4/datatypes.html#primitive). Where fhir.resources is lenient it is strict:
JSON types must be exact (`"true"` is not a boolean, `"5"` not an integer), `null` only
stands in primitive arrays, objects and arrays are never empty, primitives are never empty strings
and strings never only whitespace (which the XML format trims to nothing) nor over 1,048,576
characters, nor hold control characters other than tab, CR and LF, nor lone surrogates; codes have
single spaces inside, uris hold no whitespace, and ids are at most 64 characters (mappings/fhirtext.py
has the character rules, shared with the event schemas). Extensions follow ext-1:
a value[x] or sub-extensions, never both, never neither
(https://hl7.org/fhir/R4/extensibility.html#Extension).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from mappings import fhirtext

Errors = list[tuple[str, str]] | None  # (path relative to the checked value, message), None when clean
Check = Callable[[Any], Errors]
# Every check has a twin that only tells whether the value is clean: almost every value checked is, and
# answering that costs less than walking for errors (no paths, no error lists, known-good values skipped).
# Only a value found unclean is walked again by the checks above, which name its problems.
Clean = Callable[[Any], bool]


@dataclass(frozen=True)
class ElementDef:
    """One element of a type: JSON name, type, cardinality and the constraints on it.

    `type` is a primitive name ("code", "date"...), "Resource" for any resource (dispatched on
    its resourceType) or the key of a complex type, which the loader resolves.
    """

    key: str
    type: str
    primitive: bool
    is_list: bool = False
    nullable_items: bool = False
    required: bool = False
    choice: str | None = None
    choice_required: bool = False


@dataclass(frozen=True)
class TypeDef:
    """A complex type or a resource: its name and its elements."""

    name: str
    is_resource: bool
    elements: tuple[ElementDef, ...]


Loader = Callable[[str], TypeDef | None]

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
# for (non-ASCII text, a tab) goes to the regexes, which decide.


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _plain_string_clean(value: Any) -> bool:
    if type(value) is str and value and len(value) <= _MAX_STRING and _printable_ascii(value) and not value.isspace():
        return True
    return _plain_string(value) is None


def _surely_uri(value: str) -> bool:
    return bool(value) and _printable_ascii(value) and " " not in value


def _surely_code(value: str) -> bool:
    return bool(value) and _printable_ascii(value) and value[0] != " " and value[-1] != " " and "  " not in value


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


def _has_extension(element: Any) -> bool:
    """Tell whether a primitive's `_element` carries an extension, standing in for an absent value."""
    return isinstance(element, dict) and bool(element.get("extension"))


class _Compiled:
    """The compiled checks of one complex type or resource."""

    __slots__ = ("choice_of", "clean", "clean_fields", "fields", "is_resource", "name", "required", "required_choices")

    def __init__(self, name: str, is_resource: bool) -> None:
        self.name = name
        self.is_resource = is_resource
        self.fields: dict[str, Check] = {}
        self.clean_fields: dict[str, Clean] = {}  # the fields' twins: whether a value is clean
        self.clean: Clean = _never_clean  # whether `check` would find nothing; set once compiled
        self.required: list[tuple[str, str | None]] = []  # (key, key of its primitive extension)
        self.choice_of: dict[str, str] = {}  # element key -> its choice group (value[x] -> "value")
        self.required_choices: list[tuple[str, tuple[str, ...]]] = []  # (name, its keys) for a required name[x]

    def check(self, value: Any) -> Errors:
        if type(value) is not dict:
            return [("", f"expected an object ({self.name}), got {_got(value)}")]
        if not value:
            return [("", f"an empty object is not valid FHIR JSON ({self.name}; leave the element out)")]
        if "id" in value and len(value) == 1 and not self.is_resource:
            return [("", f"ele-1: an element has a value or children, not only an id ({self.name})")]
        errors = None
        fields = self.fields
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                if key == "resourceType" and self.is_resource:
                    continue
                errors = (errors or []) + [(f".{key}", f"unknown element {key!r} in {self.name}")]
                continue
            found = field(item)
            if found:
                errors = (errors or []) + [(f".{key}{p}", m) for p, m in found]
        for key, ext_key in self.required:
            if value.get(key) is None and not (ext_key and _has_extension(value.get(ext_key))):
                errors = (errors or []) + [(f".{key}", f"{self.name}.{key} is required")]
        if self.choice_of:
            chosen = [(self.choice_of[k], k) for k in value if k in self.choice_of]
            if len(chosen) > 1 and len({group for group, _ in chosen}) < len(chosen):
                errors = (errors or []) + self._choice_errors(chosen)
        for name, keys in self.required_choices:
            if not any(k in value for k in keys):
                errors = (errors or []) + [(f".{name}[x]", f"{self.name}.{name}[x] is required")]
        return errors

    def compile_clean(self) -> None:
        """Set `clean`: True exactly when `check` would return no errors."""
        fields = self.clean_fields
        get = fields.get
        is_resource = self.is_resource
        required = tuple(self.required)
        choice_of = dict(self.choice_of)
        choice_get = choice_of.get
        required_choices = tuple(keys for _name, keys in self.required_choices)
        value_keys = self.value_keys if isinstance(self, _CompiledExtension) else None

        def clean(value: Any) -> bool:
            if type(value) is not dict or not value:
                return False
            if not is_resource and "id" in value and len(value) == 1:
                return False
            groups: set[str] | None = None
            for key, item in value.items():
                field = get(key)
                if field is None:
                    if key == "resourceType" and is_resource:
                        continue
                    return False
                if not field(item):
                    return False
                if choice_of:
                    group = choice_get(key)
                    if group is not None:
                        if groups is None:
                            groups = {group}
                        elif group in groups:
                            return False  # two of one choice group
                        else:
                            groups.add(group)
            for key, ext_key in required:
                if value.get(key) is None and not (ext_key and _has_extension(value.get(ext_key))):
                    return False
            for keys in required_choices:
                if not any(k in value for k in keys):
                    return False
            if value_keys is not None:  # ext-1
                return value_keys.isdisjoint(value) == bool(value.get("extension"))
            return True

        self.clean = clean

    @staticmethod
    def _choice_errors(chosen: list[tuple[str, str]]) -> list[tuple[str, str]]:
        seen: dict[str, str] = {}
        errors = []
        for group, key in chosen:
            if group in seen:
                errors.append((f".{key}", f"only one of {group}[x] is allowed: {seen[group]} and {key}"))
            seen.setdefault(group, key)
        return errors


def _never_clean(_value: Any) -> bool:
    return False  # a type still being compiled: its values go the long way


class _CompiledExtension(_Compiled):
    """An Extension: its elements, then ext-1 (a value[x] or sub-extensions, not both, not neither)."""

    __slots__ = ("value_keys",)

    def __init__(self, name: str, is_resource: bool) -> None:
        super().__init__(name, is_resource)
        self.value_keys: frozenset[str] = frozenset()  # valueString, valueCode...: set once compiled

    def check(self, value: Any) -> Errors:
        errors = _Compiled.check(self, value)
        if type(value) is not dict or not value:
            return errors
        has_value = not self.value_keys.isdisjoint(value)
        if has_value == bool(value.get("extension")):
            which = "both" if has_value else "neither"
            message = f"ext-1: an extension has either a value[x] or sub-extensions, not {which}"
            errors = (errors or []) + [("", message)]
        return errors


class StructureValidator:
    """Checks resources against compiled type definitions; a type is compiled on first use."""

    def __init__(self, load: Loader) -> None:
        self._load = load
        self._types: dict[str, _Compiled | None] = {}
        self._primitives: dict[str, Check] = {}

    def knows(self, resource_type: str) -> bool:
        """Tell whether a resource type exists (compiling it if needed)."""
        compiled = self._compiled(resource_type)
        return compiled is not None and compiled.is_resource

    def errors(self, resource: Any) -> dict[str, str]:
        """Return {element path: message} for every structural problem; paths start with the resourceType."""
        if self._resource_clean(resource):
            return {}
        found = self._check_resource(resource)
        root = resource.get("resourceType") if isinstance(resource, dict) else None
        return {f"{root or 'Resource'}{path}": message for path, message in found or []}

    def _check_resource(self, value: Any) -> Errors:
        if type(value) is not dict:
            return [("", f"expected a resource object, got {_got(value)}")]
        resource_type = value.get("resourceType")
        compiled = self._compiled(resource_type) if isinstance(resource_type, str) else None
        if compiled is None or not compiled.is_resource:
            return [(".resourceType", f"unknown resource type {resource_type!r}")]
        return compiled.check(value)

    def _resource_clean(self, value: Any) -> bool:
        """Whether `_check_resource` would find nothing."""
        if type(value) is not dict:
            return False
        resource_type = value.get("resourceType")
        compiled = self._compiled(resource_type) if isinstance(resource_type, str) else None
        return compiled is not None and compiled.is_resource and compiled.clean(value)

    def _compiled(self, key: str) -> _Compiled | None:
        if key in self._types:
            return self._types[key]
        definition = self._load(key)
        if definition is None:
            self._types[key] = None
            return None
        kind = _CompiledExtension if definition.name == "Extension" else _Compiled
        compiled = kind(definition.name, definition.is_resource)
        self._types[key] = compiled  # before the fields: types refer to themselves (Extension, Reference)
        for element in definition.elements:
            compiled.fields[element.key] = self._field_check(element)
            compiled.clean_fields[element.key] = self._field_clean(element)
            if element.required:
                ext_key = f"_{element.key}" if element.primitive else None
                compiled.required.append((element.key, ext_key))
        groups: dict[str, list[ElementDef]] = {}
        for element in definition.elements:
            if element.choice:
                groups.setdefault(element.choice, []).append(element)
                compiled.choice_of[element.key] = element.choice
        if isinstance(compiled, _CompiledExtension):
            compiled.value_keys = frozenset(k for k, group in compiled.choice_of.items() if group == "value")
        compiled.required_choices = [
            (name, tuple(e.key for e in members)) for name, members in groups.items() if members[0].choice_required
        ]
        compiled.compile_clean()
        return compiled

    def _field_check(self, element: ElementDef) -> Check:
        if element.primitive:
            item = self._primitives.get(element.type) or self._primitives.setdefault(
                element.type, primitive_check(element.type)
            )
        elif element.type == "Resource":
            item = self._check_resource
        else:
            compiled = self._compiled(element.type)
            if compiled is None:
                raise ValueError(f"no definition for {element.type}")
            item = compiled.check
        return _list_check(item, element.nullable_items) if element.is_list else item

    def _field_clean(self, element: ElementDef) -> Clean:
        """The twin of `_field_check(element)`: whether a value of the element is clean."""
        item: Clean
        if element.primitive:
            item = _clean_of(self._primitives[element.type])  # set by _field_check
        elif element.type == "Resource":
            item = self._resource_clean
        else:
            compiled = self._compiled(element.type)
            assert compiled is not None  # _field_check raised otherwise
            if compiled.clean is not _never_clean:
                item = compiled.clean
            else:  # a type still compiling (it refers to itself, or to a type referring back): read when called

                def item(value: Any, compiled: _Compiled = compiled) -> bool:
                    return compiled.clean(value)

        return _list_clean(item, element.nullable_items) if element.is_list else item
