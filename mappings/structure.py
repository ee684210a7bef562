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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mappings.primitives import Check, Clean, Errors, _clean_of, _got, _list_check, _list_clean, primitive_check


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
