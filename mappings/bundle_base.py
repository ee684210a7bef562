"""Relative references in a Bundle entry, resolved against the entry's `fullUrl` as R4 resolves them.

R4 ("Resolving references in Bundles", https://hl7.org/fhir/R4/bundle.html#references): a relative reference
(`Patient/123`) in an entry whose `fullUrl` is a RESTful absolute URL (`https://other.example/fhir/CarePlan/1`)
means that URL's service base followed by the reference (`https://other.example/fhir/Patient/123`). The reader
(`mappings.bundle.bundle_to_plan`) takes `Patient/123` as a resource of the configured FHIR server, which is
right only when the entry is on that server (or is a `urn:uuid:`, or has no fullUrl). `absolute_references`
is the pre-pass that writes, in each entry on another server, every relative reference as the absolute one it
means, so the reader and the door check (`service.sync.push_bundle.on_configured_server`) see it as the
reference to the other server it is (docs/references.md).
"""

from __future__ import annotations

from typing import Any

from mappings.reference_parse import parse_reference, same_server

Json = dict[str, Any]


def _rest_base(full_url: Any) -> str | None:
    """Return the service base (ending in `/`) of a RESTful absolute fullUrl, None for any other fullUrl."""
    parsed = parse_reference(full_url)
    return parsed.base if parsed is not None and parsed.kind == "absolute" else None


def _entry_urls(entries: list[Any]) -> dict[tuple[str, str], list[tuple[str, str | None]]]:
    """Map (Type, id) to the (base, exact fullUrl string) of every entry under a RESTful absolute fullUrl."""
    found: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for entry in entries:
        full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
        parsed = parse_reference(full_url)
        if parsed is not None and parsed.kind == "absolute" and parsed.type and parsed.id and parsed.base:
            found.setdefault((parsed.type, parsed.id), []).append((parsed.base, full_url))
    return found


def _absolute(reference: str, base: str, urls: dict[tuple[str, str], list[tuple[str, str | None]]]) -> str:
    """Return the absolute reference a relative one means in an entry under `base`: the fullUrl of the entry
    it names when the Bundle holds it (as that entry's fullUrl is written, so the reader finds it there),
    else `base` followed by the reference."""
    parsed = parse_reference(reference)
    if parsed is not None and parsed.type and parsed.id and parsed.version is None:
        for entry_base, full_url in urls.get((parsed.type, parsed.id), []):
            if same_server(entry_base, base) and full_url:
                return full_url
    return base + reference


def _rewrite(element: Any, base: str, urls: dict[tuple[str, str], list[tuple[str, str | None]]]) -> Any:
    """Return `element` with every relative literal `reference` made absolute on `base` (copy on write)."""
    if isinstance(element, dict):
        out: Json | None = None
        for key, value in element.items():
            parsed = parse_reference(value) if key == "reference" else None
            if parsed is not None and parsed.kind == "relative":
                new: Any = _absolute(value, base, urls)
            else:
                new = _rewrite(value, base, urls)
            if new is not value:
                out = dict(element) if out is None else out
                out[key] = new
        return element if out is None else out
    if isinstance(element, list):
        items = [_rewrite(item, base, urls) for item in element]
        return element if all(a is b for a, b in zip(items, element, strict=True)) else items
    return element


def absolute_references(bundle: Any, server_base: str | None) -> Any:
    """Return the Bundle with each relative reference in an entry on another FHIR server than `server_base`
    (its fullUrl `https://other.example/fhir/CarePlan/1`) written as the absolute reference R4 says it is
    (`Patient/123` -> `https://other.example/fhir/Patient/123`); everything else as it is.

    A reference naming another entry of the Bundle (its fullUrl is that absolute URL, compared as
    `reference_parse.same_server` compares bases) is written as that entry's fullUrl exactly, which the reader
    resolves to the entry. Entries on `server_base`, under a `urn:uuid:` or without a fullUrl keep their
    relative references (today's meaning: resources of the configured server). `#contained`, `urn:` and
    conditional references are never touched. The input is never changed (copy on write).
    """
    if not isinstance(bundle, dict) or not isinstance(bundle.get("entry"), list):
        return bundle
    entries: list[Any] = bundle["entry"]
    urls = _entry_urls(entries)
    out: list[Any] = []
    for entry in entries:
        full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
        base = _rest_base(full_url)
        if base is None or same_server(base, server_base) or not isinstance(entry.get("resource"), dict):
            out.append(entry)
            continue
        resource = _rewrite(entry["resource"], base, urls)
        out.append(entry if resource is entry["resource"] else {**entry, "resource": resource})
    if all(a is b for a, b in zip(out, entries, strict=True)):
        return bundle
    return {**bundle, "entry": out}
