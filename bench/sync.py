"""Sync costs against the local FHIR server behind a LatencyProxy (20 ms per request), each beside a baseline.

(a) HTTP requests per changed and per unchanged plan, from PushResult.requests, FhirClient.requests_sent
    and the proxy's own count of requests on the wire.
(b) Plans pushed per second (one transaction per plan, the engine's whole push: snapshot, validation,
    recording in SQLite) vs the same plans written one request per resource (conditional PUT/POST of each
    entry of `plan_to_bundle`, then a PUT of the Goals whose outcomeReference named a check-in not yet
    written). Patients are created beforehand, directly, in one transaction, and linked, so both sides
    count only the plan's own resources; the baseline writes under another identifier base.
(c) Requests and time to pull 10 plans an EHR changed among 5,000 (`pull_changed`, through the proxy: one
    `batch` of its `_lastUpdated` searches, the plans, their check-ins; must be <= 3) vs
    one paged `_include` search reading every plan (no merge). The 5,000 are loaded fast: transaction
    Bundles of 25 plans POSTed directly, their links and sync state written as a push would, and the pull
    cursor set to the load's newest lastModified; a push of a loaded plan costing 0 requests checks that.
(d) Plans pushed per second by one outbox worker pushing PLANBRIDGE_PUSH_CONCURRENCY plans at once (default
    8) vs the same worker one plan at a time: each a fresh batch of plans, Patients pre-linked as in (b),
    one push queued per plan, drained by `OutboxWorker.run_until_idle` (claim, push, record, all included).
    The CPU of this process (the worker, and the proxy, which runs in it) is printed with the proxy's own
    threads' share beneath it (LatencyProxy.cpu_seconds); a real network would cost the worker none of that.
The local FHIR server runs the hapi profile (no transaction size limit): (c) loads 25 plans per Bundle
and every plan of (b) and (d) is one transaction.
Run: `.venv/bin/python bench/sync.py [--plans 200] [--pull-plans 5000] [--changed 10] [--latency-ms 20]
[--concurrency 8] [--parts abcd]` (`--parts c` runs (c) alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mappings.bundle import plan_to_bundle
from service.devfhir import LocalFhirServer
from service.devproxy import LatencyProxy
from service.domain import codec
from service.domain.model import Plan
from service.fhir.client import FhirClient
from service.settings import Settings
from service.store.db import create_engine, upgrade
from service.store.tables import FhirLinkRow, SyncStateRow
from service.store.uow import UnitOfWork
from service.sync.engine import SyncEngine
from service.sync.merge import strip_bookkeeping
from service.sync.pull import CURSOR
from service.sync.push import bundle_digest, local_key, parse_location
from service.sync.worker import OutboxWorker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for tests.ehr_world
from tests.ehr_world import seed_ehr_world

FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures" / "plans").glob("*.json"))
MRN = "http://hospital.example.org/mrn"
Row = tuple[str, str, str, str]


def now() -> datetime:
    return datetime.now(UTC)


def make_plans(count: int, tag: str) -> list[Plan]:
    """Plans from the fixtures, cycled, each with its own id and MRN."""
    plans = []
    for i in range(count):
        plan = codec.from_dict(Plan, json.loads(FIXTURES[i % len(FIXTURES)].read_text()))
        plan.id, plan.patient.mrn = f"{tag}-{i:05d}-{plan.id}", f"MRN-{tag}-{i:05d}"
        plan.touch(now().isoformat())
        plans.append(plan)
    return plans


class Bench:
    """A SQLite store, a sync engine whose client goes through the proxy, and a direct client."""

    def __init__(self, db: sa.Engine, base_url: str, proxy: LatencyProxy, server_pid: int | None = None) -> None:
        self.db, self.proxy, self.server_pid = db, proxy, server_pid
        self.settings = Settings(identifier_base=f"https://planbridge.bench/{uuid.uuid4().hex[:8]}/id", mrn_system=MRN)
        self.client = FhirClient(proxy.url(base_url), timeout=60)
        self.direct = FhirClient(base_url, timeout=120)
        self.sync = SyncEngine(UnitOfWork(db), self.client, self.settings, now)

    def save(self, plans: list[Plan]) -> None:
        with UnitOfWork(self.db) as uow:
            for plan in plans:
                uow.plans.save(plan)
            uow.commit()

    def create_patients(self, plans: list[Plan], link: bool) -> dict[str, str]:
        """Create the plans' Patients in one direct transaction; return MRN -> `Patient/id`, linked if asked."""
        entries = [
            {
                "resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": p.patient.mrn}]},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|{p.patient.mrn}"},
            }
            for p in plans
        ]
        answer = self.direct.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}, idempotent=True
        )
        refs = {}
        for plan, result in zip(plans, answer["entry"], strict=True):
            rtype, fhir_id, _ = parse_location(result["response"]["location"]) or ("", "", None)
            refs[plan.patient.mrn] = f"{rtype}/{fhir_id}"
        if link:
            with UnitOfWork(self.db) as uow:
                for plan in plans:
                    uow.links.record(plan.id, "patient", "Patient", refs[plan.patient.mrn].split("/")[1], None, now())
                uow.commit()
        return refs

    def counted(self, action: Any) -> tuple[Any, int, int, float]:
        """Run `action`; return its result, client requests, requests on the wire and seconds."""
        sent, wire, started = self.client.requests_sent, self.proxy.requests, time.perf_counter()
        result = action()
        return result, self.client.requests_sent - sent, self.proxy.requests - wire, time.perf_counter() - started


def process_cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far: this one's when `pid` is None (Linux /proc)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _resolve(node: Any, ids: dict[str, str]) -> tuple[Any, bool]:
    """Rewrite urn:uuid references to written ids; drop list items naming one not yet written."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:uuid:"):
            return ({**node, "reference": ids[ref]}, False) if ref in ids else (node, True)
        out, missing = {}, False
        for key, value in node.items():
            out[key], gap = _resolve(value, ids)
            missing |= gap
        return out, missing
    if isinstance(node, list):
        kept, missing = [], False
        for item in node:
            value, gap = _resolve(item, ids)
            missing |= gap
            if not gap:
                kept.append(value)
        return kept, missing
    return node, False


def push_per_resource(client: FhirClient, plan: Plan, base: str, patient_ref: str) -> None:
    """The baseline: write a plan's Bundle entries one conditional request each, in order."""
    ids: dict[str, str] = {}
    later: list[tuple[str, dict[str, Any]]] = []
    for entry in plan_to_bundle(plan, base, MRN, patient_ref)["entry"]:
        request, resource = entry["request"], entry["resource"]
        body, missing = _resolve(resource, ids)
        body = {k: v for k, v in body.items() if v != []}
        if request["method"] == "POST":
            response = client.request(
                "POST", request["url"], json=body, headers={"If-None-Exist": request["ifNoneExist"]}
            )
        else:
            response = client.request("PUT", request["url"], json=body)
        written = response.json()
        ids[entry["fullUrl"]] = f"{written['resourceType']}/{written['id']}"
        if missing:
            later.append((ids[entry["fullUrl"]], resource))
    for ref, resource in later:
        body, _ = _resolve(resource, ids)
        client.request("PUT", ref, json={**body, "id": ref.split("/")[1]})


def round_trips(bench: Bench) -> dict[str, float]:
    """(a) Push one plan of each fixture, edit each, push again, push once more unchanged."""
    plans = make_plans(len(FIXTURES), "rt")
    bench.save(plans)
    bench.create_patients(plans, link=True)
    first = [bench.sync.push(p.id) for p in plans]
    with UnitOfWork(bench.db) as uow:
        for plan in plans:
            current = uow.plans.get(plan.id)
            current.goals[0].status_reason = "reviewed in clinic"
            current.touch(now().isoformat())
            uow.plans.save(current)
        uow.commit()
    changed, sent, wire, _ = bench.counted(lambda: [bench.sync.push(p.id) for p in plans])
    unchanged, sent0, wire0, _ = bench.counted(lambda: [bench.sync.push(p.id) for p in plans])
    assert all(r.status == "in_sync" for r in first + changed + unchanged)
    n = len(plans)
    return {
        "first": sum(r.requests for r in first) / n,
        "changed": sum(r.requests for r in changed) / n,
        "changed_client": sent / n,
        "changed_wire": wire / n,
        "unchanged": sum(r.requests for r in unchanged) / n,
        "unchanged_wire": (sent0 + wire0) / n,
    }


def push_rate(bench: Bench, count: int) -> dict[str, float]:
    """(b) Plans per second through the proxy: the engine vs one request per resource."""
    plans = make_plans(count, "push")
    bench.save(plans)
    patients = bench.create_patients(plans, link=True)
    results, sent, _, seconds = bench.counted(lambda: [bench.sync.push(p.id) for p in plans])
    # one transaction per plan, plus at most one CapabilityStatement read (once per process, for the first
    # bundle larger than the strictest known cap) when (a) has not run before
    assert all(r.status == "in_sync" for r in results), results[:3]
    assert 0 <= sum(r.requests for r in results) - count <= 1, [r for r in results if r.requests != 1][:3]
    other_base = f"{bench.settings.identifier_base}-per-resource"

    def baseline() -> None:
        for plan in plans:
            push_per_resource(bench.client, plan, other_base, patients[plan.patient.mrn])

    _, base_sent, _, base_seconds = bench.counted(baseline)
    return {
        "ours": count / seconds,
        "ours_requests": sent / count,
        "base": count / base_seconds,
        "base_requests": base_sent / count,
        "resources": sum(len(plan_to_bundle(p, other_base, MRN, "Patient/1")["entry"]) for p in plans) / count,
    }


def worker_rate(bench: Bench, count: int, concurrency: int, tag: str) -> dict[str, float]:
    """(d) Plans per second through the proxy: one outbox worker draining `count` queued pushes."""
    plans = make_plans(count, tag)
    bench.save(plans)
    bench.create_patients(plans, link=True)
    with UnitOfWork(bench.db) as uow:
        for plan in plans:
            uow.outbox.add(plan.id, "push_plan", None, None, now())
        uow.commit()
    settings = replace(bench.settings, push_concurrency=concurrency)
    worker = OutboxWorker(UnitOfWork(bench.db), bench.client, settings, now)
    cpu = process_cpu_seconds(None), process_cpu_seconds(bench.server_pid), bench.proxy.cpu_seconds()
    taken, sent, wire, seconds = bench.counted(worker.run_until_idle)
    ours, server = process_cpu_seconds(None) - cpu[0], process_cpu_seconds(bench.server_pid) - cpu[1]
    proxy = bench.proxy.cpu_seconds() - cpu[2]
    with UnitOfWork(bench.db) as uow:
        done = [row for row in uow.outbox.list(status="done") if row.plan_id.startswith(f"{tag}-")]
    assert (taken, len(done)) == (count, count), (taken, len(done))  # requests: one transaction each
    rates = {"rate": count / seconds, "requests": sent / count, "wire": wire / count}
    cpus = {"cpu_ours": 1000 * ours / count, "cpu_proxy": 1000 * proxy / count, "cpu_server": 1000 * server / count}
    return rates | cpus


def load_synced(bench: Bench, plans: list[Plan], per_bundle: int = 25) -> tuple[str, dict[str, dict[str, str]]]:
    """Put plans on the server as synced, fast; return the newest lastModified and each plan's links."""
    bench.save(plans)
    base = bench.settings.identifier_base
    batches = [plans[i : i + per_bundle] for i in range(0, len(plans), per_bundle)]

    def bundle_of(batch: list[Plan]) -> tuple[dict[str, Any], list[list[tuple[int, dict[str, Any]]]]]:
        entries: list[dict[str, Any]] = []
        at: dict[str, int] = {}
        where = []
        for plan in batch:
            mine = []
            for entry in plan_to_bundle(plan, base, MRN)["entry"]:
                if entry["fullUrl"] not in at:  # a person several plans name is created once
                    at[entry["fullUrl"]] = len(entries)
                    entries.append(entry)
                mine.append((at[entry["fullUrl"]], entry["resource"]))
            where.append(mine)
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, where

    newest, links_out = "", {}
    with ThreadPoolExecutor(1) as sender:  # the server works on one Bundle while the next is built
        pending = []
        for batch in batches:
            bundle, where = bundle_of(batch)
            pending.append((batch, where, sender.submit(bench.direct.transaction, bundle, idempotent=True)))
        for batch, where, future in pending:
            answer = future.result()["entry"]
            links, states, stamp = [], [], now()
            for plan, mine in zip(batch, where, strict=True):
                keys: dict[str, str] = {}
                for index, resource in mine:
                    rtype, fhir_id, version = parse_location(answer[index]["response"]["location"]) or ("", "", None)
                    newest = max(newest, answer[index]["response"].get("lastModified", ""))
                    key = local_key(resource, base)
                    keys[key] = f"{rtype}/{fhir_id}"
                    links.append(dict(plan_id=plan.id, local_key=key, resource_type=rtype, fhir_id=fhir_id))
                    links[-1].update(version_id=version, synced_at=stamp)
                digest = bundle_digest(plan_to_bundle(plan, base, MRN, keys["patient"]))
                states.append(
                    dict(plan_id=plan.id, status="in_sync", pushed_hash=digest, last_pushed_at=stamp)
                    | dict(base_document=strip_bookkeeping(codec.to_dict(plan)))
                )
                links_out[plan.id] = keys
            with bench.db.begin() as conn:
                conn.execute(sa.insert(FhirLinkRow), links)
                conn.execute(sa.insert(SyncStateRow), states)
    with UnitOfWork(bench.db) as uow:
        uow.sync.set_cursor(CURSOR, newest)
        uow.commit()
    return newest, links_out


def pull_changed(bench: Bench, count: int, changed: int) -> dict[str, float]:
    """(c) Requests and time to pull `changed` plans the EHR edited among `count` synced plans."""
    plans = make_plans(count, "pull")
    started = time.perf_counter()
    _, links = load_synced(bench, plans)
    loaded = time.perf_counter() - started
    probe = bench.sync.push(plans[0].id)
    assert (probe.status, probe.requests) == ("in_sync", 0), probe  # loaded plans count as synced
    edited = plans[:: max(1, count // changed)][:changed]
    for plan in edited:  # an EHR user edits a goal of each: a plain read and update, not through the proxy
        goal = bench.direct.read(*links[plan.id][f"goal:{plan.goals[0].id}"].split("/"))
        goal["statusReason"] = "changed in the EHR"
        bench.direct.request("PUT", f"Goal/{goal['id']}", json=goal)
    result, sent, wire, seconds = bench.counted(bench.sync.pull_changed)
    assert result.outcomes == {p.id: "updated" for p in edited}, result.outcomes
    includes = [("_include", "CarePlan:goal"), ("_include", "CarePlan:care-team"), ("_include", "CarePlan:subject")]
    # 50 a page, as the puller asks for plans: the server caps a page with its includes near 1,000 resources
    query = [("identifier", f"{bench.settings.identifier_base}/plan|"), *includes, ("_count", "50")]
    entries, full_sent, _, full_seconds = bench.counted(lambda: bench.client.search_entries("CarePlan", query))
    read = sum(e["resource"]["resourceType"] == "CarePlan" for e in entries)
    assert read >= count  # these, and the plans of (a) and (b)
    return {
        "load_s": loaded,
        "load_rate": count / loaded,
        "requests": result.requests,
        "client": sent,
        "wire": wire,
        "seconds": seconds,
        "full_requests": full_sent,
        "full_seconds": full_seconds,
        "full_plans": read,
    }


def table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    """Run the measurements asked for (all four by default) and print them as one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=200, help="plans pushed in (b)")
    parser.add_argument("--pull-plans", type=int, default=5000, help="synced plans on the server in (c)")
    parser.add_argument("--changed", type=int, default=10, help="plans the EHR changes in (c)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="latency the proxy adds per request")
    parser.add_argument("--concurrency", type=int, default=8, help="pushes one worker makes at once in (d)")
    parser.add_argument("--parts", default="abcd", help="which measurements to run, e.g. `c` (default: abcd)")
    args = parser.parse_args()
    parts = set(args.parts.lower())
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalFhirServer(log_path=Path(tmp) / "fhir.log", profile="hapi") as server,
    ):
        seed_ehr_world(server.base_url)  # what the fixture plans name: the server refuses dangling references
        with LatencyProxy.for_url(server.base_url, args.latency_ms / 1000) as proxy:
            db = create_engine(f"sqlite:///{tmp}/bench.db")
            upgrade(db)
            bench = Bench(db, server.base_url, proxy, server.process.pid if server.process else None)
            a = round_trips(bench) if "a" in parts else None
            b = push_rate(bench, args.plans) if "b" in parts else None
            d1 = worker_rate(bench, args.plans, 1, "one") if "d" in parts else None
            d = worker_rate(bench, args.plans, args.concurrency, "pool") if "d" in parts else None
            c = pull_changed(bench, args.pull_plans, args.changed) if "c" in parts else None
            db.dispose()
    ms, ok = args.latency_ms, lambda good: "ok" if good else "FAILED"
    rows: list[Row] = [("measure", "planbridge", "baseline", "ratio / check")]
    if a is not None:
        rows += [
            (
                "(a) requests per changed plan (PushResult)",
                f"{a['changed']:.2f}",
                "",
                f"must be 1: {ok(a['changed'] == 1)}",
            ),
            ("    same, by FhirClient / on the wire", f"{a['changed_client']:.2f} / {a['changed_wire']:.2f}", "", ""),
            (
                "    requests per unchanged plan (PushResult)",
                f"{a['unchanged']:.2f}",
                "",
                f"must be 0: {ok(a['unchanged'] == 0)}",
            ),
            ("    same, by FhirClient + on the wire", f"{a['unchanged_wire']:.2f}", "", ""),
            ("    requests for a new plan, Patient pre-linked", f"{a['first']:.2f}", "", ""),
        ]
    if b is not None:
        rows += [
            (
                f"(b) plans pushed per second ({args.plans}, +{ms:g} ms)",
                f"{b['ours']:.1f}",
                f"{b['base']:.1f}",
                f"{b['ours'] / b['base']:.1f}x",
            ),
            (
                "    requests per plan",
                f"{b['ours_requests']:.2f}",
                f"{b['base_requests']:.2f}",
                f"{b['base_requests'] / b['ours_requests']:.1f}x fewer",
            ),
        ]
    if c is not None:
        rows += [
            (
                f"(c) requests to pull {args.changed} changed of {args.pull_plans}",
                f"{c['requests']}",
                f"{c['full_requests']}",
                f"{c['full_requests'] / c['requests']:.1f}x fewer",
            ),
            (
                "    same, by FhirClient / on the wire",
                f"{c['client']} / {c['wire']}",
                "",
                f"must be <= 3: {ok(max(c['requests'], c['client'], c['wire']) <= 3)}",
            ),
            (
                "    seconds (pull incl. merge; full read)",
                f"{c['seconds']:.2f}",
                f"{c['full_seconds']:.2f}",
                f"{c['full_seconds'] / c['seconds']:.1f}x faster",
            ),
        ]
    if d is not None and d1 is not None:
        rows += [
            (
                f"(d) plans pushed per second, one worker, {args.concurrency} at once (+{ms:g} ms)",
                f"{d['rate']:.1f}",
                f"{d1['rate']:.1f}",
                f"{d['rate'] / d1['rate']:.1f}x",
            ),
            ("    requests per plan, by FhirClient / on the wire", f"{d['requests']:.2f} / {d['wire']:.2f}", "", ""),
            (
                "    CPU ms per plan: this process (worker, proxy)",
                f"{d['cpu_ours']:.2f}",
                f"{d1['cpu_ours']:.2f}",
                "",
            ),
            (
                "      of which the latency proxy's threads",
                f"{d['cpu_proxy']:.2f}",
                f"{d1['cpu_proxy']:.2f}",
                "",
            ),
            ("    CPU ms per plan: the local FHIR server", f"{d['cpu_server']:.2f}", f"{d1['cpu_server']:.2f}", ""),
        ]
    print(table(rows))
    print()
    if b is not None:
        print(f"baselines: (a)/(b) one conditional request per resource ({b['resources']:.1f} resources per plan,")
        print("           Goals naming check-ins written twice);")
    if c is not None:
        print(
            f"           (c) one paged _include search reading every plan of ours ({c['full_plans']} CarePlans), "
            "no merge; the pull: one batch of its _lastUpdated searches, the plans, their check-ins."
        )
    if d is not None:
        print("           (d) the same worker pushing one plan at a time (PLANBRIDGE_PUSH_CONCURRENCY=1).")
    print("local FHIR server: hapi profile (no transaction size limit); store: SQLite.")
    total = time.perf_counter() - started
    if c is not None:
        print(f"(c) loaded {args.pull_plans} plans directly in {c['load_s']:.1f} s ({c['load_rate']:.0f} plans/s).")
    print(f"whole run: {total:.0f} s")


if __name__ == "__main__":
    main()
