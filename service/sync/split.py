"""Split a plan's transaction Bundle into transactions a server's limits allow, in dependency order.

Some servers cap transactions. Medplum refuses one that needs strict isolation (any conditional entry:
a POST with `ifNoneExist`, a PUT or DELETE whose URL has a `?`) with more than 8 entries, and one with
more than 50 updates (PUTs) (`Limits`, from `service.fhir.capabilities`). A plan Bundle is usually
larger. `split_bundle` cuts it into an ordered list of chunks, each within the limits:

1. New resources (the conditional entries) first, in an order where everything a resource references
   is already on the server or in the same chunk: Patient and people, CareTeam, Goals, Observations,
   CarePlan. Resources that reference each other (a Goal names its check-in Observations, each
   Observation names its Goal; a revised Goal names its successor) go in one chunk when they fit.
   When such a cycle does not fit in one chunk it is broken: a resource is first created without its
   references to resources not created yet, and written whole later (a follow-up: `PUT Type/id` with
   `If-Match` on the version its creation returned).
2. Then the resources the server already holds (`PUT Type/id` + `If-Match`), which need no strict
   isolation, up to `max_updates` per chunk (the first of them in the last chunk of step 1 when it has
   room), and the follow-ups.

After each chunk lands, `landed` reads the ids and versions from its answer, and `realize` writes the
next chunk with every `urn:uuid` reference to a landed resource replaced by its `Type/id`. The push's
Provenance (service.sync.provenance) goes last (`with_last`), so its targets name what earlier chunks
wrote by their real ids.

Everything here is pure. The one piece of process state, what this process has learned about each
server's limits, is `LEARNED` at the end.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mappings.reference_parse import parse_reference
from service.fhir.capabilities import Limits

Json = dict[str, Any]
Landed = tuple[str, str, str | None]  # (resource type, id, version) of a resource on the server

# What Medplum enforces (@medplum/fhir-router BatchProcessor), applied when its refusal is met.
MEDPLUM_LIMITS = Limits(max_strict_entries=8, max_updates=50)
# The most entries a push sends without asking the server for its limits: within Medplum's caps.
UNASKED_ENTRIES = 8

# Create order by resource type: what is referenced comes before what references it.
RANK = {
    "Patient": 0,
    "Practitioner": 1,
    "RelatedPerson": 1,
    "PractitionerRole": 1,
    "Organization": 1,
    "CareTeam": 2,
    "Goal": 3,
    "Observation": 4,
    "CarePlan": 6,
}
OTHER_RANK = 5


def is_strict(entry: Json) -> bool:
    """Tell whether a transaction entry needs strict isolation: a conditional create, update or delete."""
    request = entry.get("request") or {}
    method, url = request.get("method"), str(request.get("url", ""))
    if method == "POST":
        return bool(request.get("ifNoneExist"))
    return method in ("PUT", "DELETE", "PATCH") and "?" in url


def fits(entries: list[Json], limits: Limits) -> bool:
    """Tell whether one transaction of these entries is within the limits."""
    updates = sum(1 for e in entries if (e.get("request") or {}).get("method") == "PUT")
    if limits.max_updates is not None and updates > limits.max_updates:
        return False
    strict_cap = limits.max_strict_entries
    return strict_cap is None or len(entries) <= strict_cap or not any(is_strict(e) for e in entries)


def tightest(*all_limits: Limits | None) -> Limits:
    """Return the limits that satisfy every one given (the smallest cap of each kind)."""

    def least(values: Iterable[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    given = [limits for limits in all_limits if limits is not None]
    return Limits(
        max_strict_entries=least(limits.max_strict_entries for limits in given),
        max_updates=least(limits.max_updates for limits in given),
    )


@dataclass(frozen=True)
class Step:
    """One entry of a chunk. `follow_up`: the whole resource, written by id over what an earlier chunk
    created without some of its references (`request` is filled in by `realize`)."""

    entry: Json
    follow_up: bool = False


@dataclass
class Split:
    """The chunks to send, in order, and the resources known on the server before the first one."""

    chunks: list[list[Step]]
    known: dict[str, Landed] = field(default_factory=dict)  # fullUrl -> where the resource is


def _references(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str):
                found.add(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


_DROP = object()


def _without(node: Any, drop: Callable[[str], bool]) -> Any:
    """Return `node` without the references `drop` names.

    A list loses the item holding one; an extension holding one (as its value or in a part) goes as a
    whole; another element loses the key; an element or list left empty goes too (FHIR JSON has none).
    """
    if isinstance(node, list):
        kept = [v for v in (_without(item, drop) for item in node) if v is not _DROP]
        return kept if kept or not node else _DROP
    if not isinstance(node, dict):
        return node
    ref = node.get("reference")
    if isinstance(ref, str) and drop(ref):
        return _DROP
    is_extension = "resourceType" not in node and isinstance(node.get("url"), str)
    out: Json = {}
    for key, value in node.items():
        kept = _without(value, drop)
        lost = kept is _DROP or (isinstance(value, list) and len(kept) < len(value))
        if is_extension and lost and (key.startswith("value") or key == "extension"):
            return _DROP  # an extension without one of its parts means something else: it goes whole
        if kept is not _DROP:
            out[key] = kept
    return out if out or not node else _DROP


def _known_at(entry: Json) -> Landed | None:
    """Return where a `PUT Type/id` entry writes (with the version it names), None for any other entry."""
    request = entry.get("request") or {}
    url = parse_reference(str(request.get("url", "")))
    at = url.literal if url is not None and url.kind == "relative" else None
    if request.get("method") != "PUT" or at is None or at[2] is not None:
        return None  # a POST, a conditional update (`Goal?identifier=...`), or not a plain `Type/id`
    version = str(request.get("ifMatch") or "").removeprefix("W/").strip('"') or None
    return at[0], at[1], version


def _sccs(nodes: list[int], deps: dict[int, set[int]]) -> list[list[int]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[int, Iterable[int]]] = [(root, iter(sorted(deps[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(deps[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def _order(entries: list[Json], new: list[int], deps: dict[int, set[int]]) -> list[list[int]]:
    """Return the components of the new entries, each after every component it references, preferring
    the create order of RANK (then the Bundle's own order) among those ready."""
    components = _sccs(new, deps)
    owner = {member: n for n, component in enumerate(components) for member in component}
    needs = {n: {owner[d] for m in c for d in deps[m]} - {n} for n, c in enumerate(components)}
    users: dict[int, set[int]] = {n: set() for n in range(len(components))}
    for n, needed in needs.items():
        for m in needed:
            users[m].add(n)

    def key(n: int) -> tuple[int, int]:
        return min((_rank(entries[i]), i) for i in components[n])

    ready = [(key(n), n) for n, needed in needs.items() if not needed]
    heapq.heapify(ready)
    ordered: list[list[int]] = []
    while ready:
        _, n = heapq.heappop(ready)
        ordered.append(components[n])
        for user in users[n]:
            needs[user].discard(n)
            if not needs[user]:
                heapq.heappush(ready, (key(user), user))
    return ordered


def _rank(entry: Json) -> int:
    return RANK.get(str((entry.get("resource") or {}).get("resourceType")), OTHER_RANK)


def _as_sent(step: Step) -> Json:
    """Return the entry as far as the limits care: a follow-up goes as a `PUT Type/id`, not conditional."""
    if not step.follow_up:
        return step.entry
    return {**step.entry, "request": {"method": "PUT", "url": f"{step.entry['resource']['resourceType']}/id"}}


def _pack(groups: Iterable[list[Step]], limits: Limits, chunks: list[list[Step]]) -> None:
    """Append the groups to `chunks` in order, each group whole, filling the last chunk first. A follow-up
    never joins the chunk that creates its resource: it needs the version that chunk returns."""
    current = chunks.pop() if chunks else []
    for group in groups:
        creating = {s.entry.get("fullUrl") for s in current}
        joins = not any(s.follow_up and s.entry.get("fullUrl") in creating for s in group)
        if current and joins and fits([_as_sent(s) for s in current + group], limits):
            current = current + group
            continue
        if current:
            chunks.append(current)
        current = list(group)
    if current:
        chunks.append(current)


def split_bundle(bundle: Json, limits: Limits) -> Split:
    """Return the chunks, in sending order, that together write what the transaction Bundle writes,
    each within `limits` (a Bundle within them is one chunk)."""
    entries: list[Json] = list(bundle.get("entry") or [])
    if fits(entries, limits):
        return Split([[Step(e) for e in entries]])
    if limits.max_strict_entries is not None and limits.max_strict_entries < 1:
        raise ValueError("a transaction must be allowed at least one entry")
    if limits.max_updates is not None and limits.max_updates < 1:
        raise ValueError("a transaction must be allowed at least one update")
    known: dict[str, Landed] = {}
    new: list[int] = []
    held: list[int] = []
    for i, entry in enumerate(entries):
        at = _known_at(entry)
        if at is not None:
            held.append(i)
            if entry.get("fullUrl"):
                known[entry["fullUrl"]] = at
        else:
            new.append(i)
    urls = {entries[i].get("fullUrl"): i for i in new if entries[i].get("fullUrl")}
    refs = {i: _references(entries[i].get("resource")) for i in range(len(entries))}
    deps = {i: {urls[r] for r in refs[i] if r in urls} - {i} for i in new}

    groups: list[list[Step]] = []
    follow_ups: list[list[Step]] = []
    for component in _order(entries, new, deps):
        whole = [Step(entries[i]) for i in component]
        if len(component) == 1 or fits([s.entry for s in whole], limits):
            groups.append(whole)  # in the Bundle's order
            continue
        # A cycle too big for one transaction: create in RANK order, each without its references to
        # members not created yet, and write those whole by id afterwards.
        order = sorted(component, key=lambda i: (_rank(entries[i]), i))
        for pos, i in enumerate(order):
            later = {entries[j].get("fullUrl") for j in order[pos + 1 :]}
            forward = later & refs[i]
            if not forward:
                groups.append([Step(entries[i])])
                continue
            stub = dict(entries[i], resource=_without(copy.deepcopy(entries[i]["resource"]), forward.__contains__))
            groups.append([Step(stub)])
            follow_ups.append([Step(entries[i], follow_up=True)])
    chunks: list[list[Step]] = []
    _pack(groups, limits, chunks)
    _pack([[Step(entries[i])] for i in held] + follow_ups, limits, chunks)
    return Split(chunks, known)


def with_last(split: Split, entry: Json, limits: Limits) -> Split:
    """Return the split with `entry` (a plain create, such as the push's Provenance) at the end of the last
    chunk when it fits there, else in a chunk of its own after it. `realize` names what earlier chunks
    wrote by `Type/id` in it, as in any other entry."""
    chunks = [list(chunk) for chunk in split.chunks]
    if chunks and fits([_as_sent(s) for s in chunks[-1]] + [entry], limits):
        chunks[-1].append(Step(entry))
    else:
        chunks.append([Step(entry)])
    return Split(chunks, dict(split.known))


def realize(steps: list[Step], known: dict[str, Landed]) -> Json:
    """Return the transaction Bundle for one chunk: references to resources already on the server
    name them by `Type/id`; a follow-up is a `PUT Type/id` with `If-Match` on the version last landed."""
    rewrite = {url: f"{rtype}/{rid}" for url, (rtype, rid, _v) in known.items()}
    out = []
    for step in steps:
        entry = copy.deepcopy(step.entry)
        entry["resource"] = _retarget(entry.get("resource"), rewrite)
        if step.follow_up:
            rtype, rid, version = known[entry["fullUrl"]]
            entry["request"] = {"method": "PUT", "url": f"{rtype}/{rid}"}
            if version:
                entry["request"]["ifMatch"] = f'W/"{version}"'
            entry["resource"]["id"] = rid
        out.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}


def _retarget(node: Any, rewrite: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_retarget(v, rewrite) for v in node]
    if isinstance(node, dict):
        return {
            k: (rewrite.get(v, v) if k == "reference" and isinstance(v, str) else _retarget(v, rewrite))
            for k, v in node.items()
        }
    return node


def location_of(result: Json) -> Landed | None:
    """Return (type, id, version) of one transaction-response entry: from `response.location` (relative
    or absolute, with or without `_history`), the version else from `etag` or the returned resource."""
    response = result.get("response") or {}
    parsed = parse_reference(str(response.get("location") or "").rstrip("/"))
    at = parsed.literal if parsed is not None else None
    if at is None:  # no Location, or not `[base/]Type/id[/_history/vid]`
        return None
    rtype, rid, version = at
    if version is None:
        etag = str(response.get("etag") or "").removeprefix("W/").strip('"')
        meta = ((result.get("resource") or {}).get("meta") or {}).get("versionId")
        version = etag or (str(meta) if meta else None)
    return rtype, rid, version


def landed(chunk: Json, answer: Json) -> dict[str, Landed]:
    """Return fullUrl -> (type, id, version) for every entry of a chunk the server answered for."""
    out: dict[str, Landed] = {}
    for entry, result in zip(chunk.get("entry") or [], answer.get("entry") or [], strict=False):
        at = location_of(result) if isinstance(result, dict) else None
        if at is not None and entry.get("fullUrl"):
            out[entry["fullUrl"]] = at
    return out


def limits_cursor(base_url: str) -> str:
    """Return the name under which a server's refusal-learned limits are kept (sync_cursors, 64 characters)."""
    return f"fhir-limits:{hashlib.sha256(base_url.encode()).hexdigest()[:40]}"


def encode_limits(limits: Limits) -> str:
    """Return limits as a cursor value: "8,50" (an empty side: no cap)."""
    return f"{limits.max_strict_entries or ''},{limits.max_updates or ''}"


def decode_limits(value: str | None) -> Limits | None:
    """Return the limits a cursor value holds, None for no value or one that does not parse."""
    strict, sep, updates = (value or "").partition(",")
    if not sep or not all(v.isdigit() or v == "" for v in (strict, updates)):
        return None
    return Limits(int(strict) if strict else None, int(updates) if updates else None)


class LearnedLimits:
    """What this process knows of each server's transaction limits, by base URL: read once from its
    CapabilityStatement, and learned from its refusals. Shared by every push; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[str, Limits] = {}
        self._refused: dict[str, Limits] = {}

    def read(self, base_url: str) -> Limits | None:
        """Return what the server's CapabilityStatement said, None when it was not read yet."""
        with self._lock:
            return self._read.get(base_url)

    def remember_read(self, base_url: str, limits: Limits) -> None:
        """Remember what the server's CapabilityStatement said (Limits() when it says nothing)."""
        with self._lock:
            self._read[base_url] = limits

    def refused(self, base_url: str) -> Limits | None:
        """Return the limits the server's refusals taught, None when it refused nothing yet."""
        with self._lock:
            return self._refused.get(base_url)

    def learn(self, base_url: str, limits: Limits) -> Limits:
        """Remember limits a refusal taught (tightened with what was learned before); return them."""
        with self._lock:
            self._refused[base_url] = tightest(self._refused.get(base_url), limits)
            return self._refused[base_url]

    def forget(self, base_url: str | None = None) -> None:
        """Forget one server's limits, or every server's."""
        with self._lock:
            for book in (self._read, self._refused):
                if base_url is None:
                    book.clear()
                else:
                    book.pop(base_url, None)


LEARNED = LearnedLimits()
