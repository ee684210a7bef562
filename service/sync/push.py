"""Push a plan to the FHIR server as one transaction, or not at all when nothing changed.

The Bundle is built from the plan (mappings.bundle). A plan whose Bundle hashes to what was last
pushed costs zero requests. Resources the server already holds are written with `PUT Type/id` and
`If-Match` on the version last seen, so a change made in the EHR since is never overwritten: the
server refuses (409/412), the plan is pulled and merged, and pushed again only if that was clean.
Reading and recording happen in short database transactions; none is held while the server works.
A Bundle over the server's transaction limits goes as several dependency-ordered transactions
(service.sync.split), each recorded as it lands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from mappings.bundle import plan_to_bundle
from mappings.fhir import validate_bundle
from mappings.reference_parse import parse_reference
from service.domain import codec
from service.domain.errors import NotFound, PlanbridgeError
from service.domain.model import Plan
from service.fhir.capabilities import Limits, server_limits
from service.fhir.client import FhirClient
from service.fhir.errors import FhirError, FhirTransportError
from service.fhir.refusals import FhirDanglingReference
from service.settings import Settings
from service.store.repo_sync import PushView
from service.store.uow import UnitOfWork
from service.sync.adopt import is_adopted
from service.sync.conditional_refs import Lookup, conditional_references, conditional_search
from service.sync.conditional_refs import ReferenceNotOnServer as ReferenceNotOnServer  # re-exported
from service.sync.delta import only_changes
from service.sync.merge import strip_bookkeeping
from service.sync.provenance import Linked, carried, is_provenance, provenance_entry
from service.sync.push_bundle import (  # noqa: F401  (re-exported)
    PatientNotOnServer,
    _patient_reference,
    _pin_versions,
    bundle_digest,
    bundle_digest_and_question,
    local_key,
    parse_location,
    sendable,
)
from service.sync.push_lookups import PushLookups
from service.sync.push_snapshot import RECONCILE, LinkRow, PushResult, _Snapshot, _Tally
from service.sync.recovery import RECREATED, RELINKED, recover_links
from service.sync.split import (
    LEARNED,
    MEDPLUM_LIMITS,
    UNASKED_ENTRIES,
    decode_limits,
    encode_limits,
    fits,
    landed,
    limits_cursor,
    location_of,
    realize,
    split_bundle,
    tightest,
    with_last,
)

log = logging.getLogger(__name__)


class Pusher(PushLookups):
    """Pushes plans; `on_conflict(plan_id)` re-reads and merges the plan, returning True when it could."""

    def __init__(
        self,
        uow: UnitOfWork,
        client: FhirClient,
        settings: Settings,
        clock: Callable[[], datetime],
        on_conflict: Callable[[str], bool] | None = None,
    ) -> None:
        self.uow, self.client, self.settings, self.clock = uow, client, settings, clock
        self.on_conflict = on_conflict
        # Set for one push by its caller (the outbox worker): run in the transaction that records the push's
        # success, so finishing the entry costs no transaction of its own. It must not raise.
        self._on_recorded: Callable[[UnitOfWork], None] | None = None

    def _snapshot(self, plan_id: str) -> _Snapshot | PushResult | str:
        """Read what to send and, when there is something, mark the push in flight, in one transaction (two,
        with a request between them, when the Patient must first be found on the server)."""
        prepared: _Snapshot | PushResult | None = None
        with self.uow.direct():  # prepared statements only, here and in `_prepare`
            plan = self.uow.plans.get(plan_id)
            if plan is None:
                raise NotFound(f"plan {plan_id} does not exist", plan_id=plan_id)
            state = self.uow.sync.push_view(plan_id)
            if state.push_started_at is not None and self.on_conflict is not None:
                return RECONCILE
            links = self._links(plan_id)
            linked_id = links["patient"][1] if "patient" in links else None
            conditional = conditional_search(plan.patient.fhir_reference) is not None
            if (plan.patient.fhir_reference and not conditional) or linked_id is not None:
                # no request needed: go on in this transaction
                patient_ref, spent = self._find_patient(linked_id, plan)
                prepared = self._prepare(plan, state, links, patient_ref, spent)
        if prepared is None:
            patient_ref, spent = self._find_patient(linked_id, plan)
        while prepared is None or isinstance(prepared, Lookup):
            # No transaction is open while the server is asked (on SQLite one would hold the write lock).
            named = None if prepared is None else prepared.resolve(lambda r: self._find_one(r, plan, None))
            spent += len(named or ())
            with self.uow.direct():
                state, links = self.uow.sync.push_view(plan_id), self._links(plan_id)
                prepared = self._prepare(plan, state, links, patient_ref, spent, named)
        if isinstance(prepared, _Snapshot) and not prepared.bundle["entry"]:
            # the server already holds all of it: nothing to send
            return PushResult(plan_id, self._record(prepared, {}), spent)
        return prepared

    def _links(self, plan_id: str) -> Linked:
        return self.uow.links.linked(plan_id)

    def _prepare(
        self,
        plan: Plan,
        state: PushView,
        links: Linked,
        patient_ref: str | None,
        spent: int,
        named: dict[str, str] | None = None,
    ) -> _Snapshot | PushResult | Lookup:
        """Build the Bundle for `plan` (a PushResult when the server has it already) and, when it has entries
        to send, mark the push in flight and commit, in the caller's open transaction. A Bundle holding
        conditional references other than the patient's is a `Lookup` until `named` (`Lookup.resolve`) is given."""
        plan_id = plan.id
        held = self.uow.sync.held(plan_id)
        sent, document = plan, codec.to_dict(plan)
        # Conflicted paths go out as the server has them, so it keeps them until resolved; items
        # the EHR deleted or removed (recorded in the plan) do not go out at all.
        out = sendable(document, held)
        if out is not document:
            sent = codec.from_dict(Plan, out)
            document = codec.to_dict(sent)
        bundle = plan_to_bundle(sent, self.settings.identifier_base, self.settings.mrn_system, patient_ref)
        # the digest of the plan as it is (a pull computes the same from the plan: pull.py), sent literally
        digest, question = bundle_digest_and_question(bundle)
        if state.pushed_hash == digest and state.status in ("in_sync", "conflicted"):
            return PushResult(plan_id, state.status, spent)
        if named is None and question:  # no `?` in any reference: no conditional one, no walk for one
            patients = {plan.patient.fhir_reference} if patient_ref is not None else set()
            lookup = [ref for ref in conditional_references(bundle) if ref not in patients]
            if lookup:
                return Lookup(lookup)
        bundle = self._named_literally(bundle, sent, patient_ref, named or {})
        validate_bundle(bundle)
        _pin_versions(bundle, links, self.settings.identifier_base)
        # An adopted plan's resources are the EHR's: only what the plan changed is written (service.sync.delta).
        careplan = links.get("careplan")
        if careplan is not None and is_adopted(plan_id, careplan[1]):
            base = self._base_bundle(self.uow.sync.base_document(plan_id), links, patient_ref, named or {})
            if base is not None:
                bundle = only_changes(bundle, base)
        what = carried(self.uow, plan_id, state.provenance_through)
        snapshot = _Snapshot(plan, sent, bundle, digest, spent, patient_ref, bool(held), what)
        snapshot.sent_document, snapshot.links = strip_bookkeeping(document), dict(links)
        snapshot.provenance = provenance_entry(
            sent,
            bundle["entry"],
            what,
            links,
            patient_ref,
            self.settings.identifier_base,
            self.clock(),
            local_key,
            server_base=self.settings.fhir_base_url,
        )
        if bundle["entry"]:
            # Marked in flight in the transaction that read it: from here the server may hold what it sends.
            self.uow.sync.mark_in_flight(plan_id, self.clock(), snapshot.sent_document)
            self.uow.commit()
        return snapshot

    def _base_bundle(
        self,
        base_document: dict[str, Any] | None,
        links: dict[str, tuple[str, str, str | None]],
        patient_ref: str | None,
        named: dict[str, str],
    ) -> dict[str, Any] | None:
        """Return the Bundle of what the server held after the last sync (the merge base), pinned as a push
        pins; None when there is no base or it does not map (then the whole plan is sent)."""
        if base_document is None:
            return None
        try:
            base_plan = codec.from_dict(Plan, base_document)
            bundle = plan_to_bundle(base_plan, self.settings.identifier_base, self.settings.mrn_system, patient_ref)
        except (PlanbridgeError, KeyError, TypeError, ValueError, AttributeError):
            return None
        bundle = self._named_literally(bundle, base_plan, patient_ref, named)
        _pin_versions(bundle, links, self.settings.identifier_base)
        return bundle

    def _mark_in_flight(self, plan_id: str, started: datetime | None, sent: dict[str, Any] | None = None) -> None:
        with self.uow:
            self.uow.sync.mark_in_flight(plan_id, started, sent)
            self.uow.commit()

    def push(self, plan_id: str, on_recorded: Callable[[UnitOfWork], None] | None = None) -> PushResult:
        """Bring the server up to date with the plan; one transaction when it changed, none when not.

        `on_recorded(uow)`, if given, runs inside the transaction that records a successful push, just
        before it commits (at most once; not at all when the push records nothing, e.g. nothing changed). That
        transaction is a direct one (`UnitOfWork.direct`): `on_recorded` runs repositories' prepared statements only.

        A refusal that means "the server is not what we last saw" (a version conflict, a resource
        deleted in the EHR: `decision == "merge"`, also a write refused for naming a resource the server no
        longer holds, `FhirDanglingReference`) is answered by re-reading and merging the plan, then one more
        try at most; a second such dangling-reference refusal is final. Every other failure is recorded on
        the plan (`last_error`, and the server's OperationOutcome) and raised, for the outbox to back off on
        or the operator to read.
        """
        self._on_recorded = on_recorded
        try:
            return self._push(plan_id, retry_after_merge=True)
        except PlanbridgeError as exc:
            self._record_failure(plan_id, exc)
            raise
        finally:
            self._on_recorded = None

    def _push(self, plan_id: str, retry_after_merge: bool) -> PushResult:
        spent = 0
        snapshot = self._snapshot(plan_id)
        if snapshot == RECONCILE:
            assert self.on_conflict is not None
            log.info("plan %s: an earlier push's outcome is unknown; reading the server first", plan_id)
            before = self.client.requests_sent
            self.on_conflict(plan_id)
            spent = self.client.requests_sent - before
            self._mark_in_flight(plan_id, None)
            snapshot = self._snapshot(plan_id)
        if not isinstance(snapshot, _Snapshot):
            assert isinstance(snapshot, PushResult)
            return PushResult(plan_id, snapshot.status, spent + snapshot.requests)
        spent += snapshot.requests
        tally = _Tally()
        try:
            status = self._send(snapshot, tally)
        except FhirTransportError as exc:
            if exc.sent:
                raise  # the server may have applied it: the in-flight mark stays, the next push reads first
            self._mark_in_flight(plan_id, None)
            raise
        except FhirError as exc:
            self._mark_in_flight(plan_id, None)  # the server answered: a transaction is all or nothing
            if exc.decision != "merge" or self.on_conflict is None:
                raise
            if isinstance(exc, FhirDanglingReference) and not retry_after_merge:
                # Still naming what the server does not hold after a re-read: the pull could not drop it (a deleted
                # Patient, a Practitioner...). Final: recorded on the plan like any stop, never re-read again.
                exc.decision = "stop"
                raise
            if exc.status in (404, 410) and retry_after_merge:  # lost by the server, or deleted in the EHR?
                before = self.client.requests_sent
                recovered = recover_links(self.uow, self.client, self.settings, plan_id, self.clock)
                spent += self.client.requests_sent - before
                if recovered in (RELINKED, RECREATED):  # the links changed: send again, once
                    again = self._push(plan_id, retry_after_merge=False)
                    return PushResult(plan_id, again.status, spent + tally.requests + again.requests, again.resources)
            log.info("plan %s: the server changed since the last sync (HTTP %s); reading it", plan_id, exc.status)
            if not self.on_conflict(plan_id):
                raise
            if not retry_after_merge:
                return PushResult(plan_id, self._status(plan_id), spent + tally.requests)
            again = self._push(plan_id, retry_after_merge=False)
            return PushResult(plan_id, again.status, spent + tally.requests + again.requests, again.resources)
        count = len(snapshot.bundle["entry"])
        log.info("plan %s pushed: %d resources in %d transaction(s)", plan_id, count, tally.transactions)
        return PushResult(plan_id, status, spent + tally.requests, count)

    def _limits(self, entries: list[dict[str, Any]], tally: _Tally) -> Limits:
        """Return the server's transaction limits as far as they are known: the settings, what its
        refusals taught, and its CapabilityStatement, read once per process when a Bundle is larger
        than any known server refuses (so a small push costs no extra request)."""
        base = self.client.base_url
        configured = Limits(self.settings.fhir_max_transaction_entries, self.settings.fhir_max_transaction_updates)
        refused = LEARNED.refused(base)
        if refused is None:  # once per process: what an earlier process learned from this server's refusals
            with self.uow:
                stored = decode_limits(self.uow.sync.cursor(limits_cursor(base)))
            refused = LEARNED.learn(base, stored or Limits())
        limits = tightest(configured, refused)
        if len(entries) <= UNASKED_ENTRIES or None not in (configured.max_strict_entries, configured.max_updates):
            return limits
        published = LEARNED.read(base)
        if published is None:
            tally.requests += 1
            try:
                published = server_limits(self.client.capabilities())
            except FhirTransportError:
                return limits  # not remembered: asked again next time
            except FhirError as exc:
                log.warning("could not read the FHIR server's limits (%s); assuming none", type(exc).__name__)
                published = Limits()
            LEARNED.remember_read(base, published)
        return tightest(limits, published)

    def _send(self, snapshot: _Snapshot, tally: _Tally) -> str:
        """Send the snapshot's Bundle and record what landed: one transaction when the server's limits
        allow it, else dependency-ordered transactions (service.sync.split), each recorded as it lands.
        Return the status the plan was left in.

        A refusal for size (Medplum's caps, `decision == "split"`) teaches the server's limits and the
        Bundle goes again at once, split; a size refusal of a split push is a stop (no retry storm).
        """
        entries = snapshot.bundle["entry"]
        # The Provenance goes in the same transaction as what it records, and counts toward the limits.
        sent = [*entries, snapshot.provenance] if snapshot.provenance is not None else entries
        limits = self._limits(sent, tally)
        if fits(sent, limits):
            tally.requests, tally.transactions = tally.requests + 1, tally.transactions + 1
            try:
                # Every entry is conditional or pinned (If-Match) but the Provenance, a plain create.
                answer = self.client.transaction({**snapshot.bundle, "entry": sent}, idempotent=True)
            except FhirError as exc:
                if exc.decision != "split":
                    raise
                learned = LEARNED.learn(self.client.base_url, MEDPLUM_LIMITS)
                with self.uow:  # kept for the next process too
                    self.uow.sync.set_cursor(limits_cursor(self.client.base_url), encode_limits(learned))
                    self.uow.commit()
                limits = tightest(limits, learned)
                if fits(sent, limits):
                    exc.decision = "stop"  # within the caps it names already: splitting cannot help
                    raise
                log.info("plan %s: the server refused the transaction as too large; splitting it", snapshot.plan.id)
            else:
                return self._record(snapshot, answer)
        split = split_bundle(snapshot.bundle, limits)
        if snapshot.provenance is not None:  # in the last transaction, naming what earlier ones wrote by id
            split = with_last(split, snapshot.provenance, limits)
        known = dict(split.known)
        log.info("plan %s: %d resources in %d transactions", snapshot.plan.id, len(entries), len(split.chunks))
        for steps in split.chunks:
            chunk = realize(steps, known)
            tally.requests, tally.transactions = tally.requests + 1, tally.transactions + 1
            try:
                answer = self.client.transaction(chunk, idempotent=True)
            except FhirError as exc:
                if exc.decision == "split":
                    exc.decision = "stop"  # refused after splitting: not tried again at once
                raise
            known.update(landed(chunk, answer))
            self._record_links(snapshot, chunk, answer)  # a crash after this loses nothing
        return self._record(snapshot, {})

    def _record_links(self, snapshot: _Snapshot, bundle: dict[str, Any], answer: dict[str, Any]) -> None:
        """Record the id and version of every resource one transaction wrote (fhir_links)."""
        with self.uow:
            self._link(snapshot, self._landed(bundle, answer), self.clock())
            self.uow.commit()

    def _landed(self, bundle: dict[str, Any], answer: dict[str, Any]) -> list[LinkRow]:
        """Return the link of every resource a transaction wrote, by the server's answer."""
        rows = []
        for entry, result in zip(bundle["entry"], answer.get("entry", []), strict=False):
            at = location_of(result) if isinstance(result, dict) else None
            if at is not None and not is_provenance(entry):  # a Provenance is the push's record, not the plan
                rows.append((local_key(entry["resource"], self.settings.identifier_base), *at))
        return rows

    def _link(self, snapshot: _Snapshot, rows: list[LinkRow], now: datetime) -> None:
        """Write links in one batch (the push holds the plan: no read first); the snapshot keeps them."""
        self.uow.links.write(snapshot.plan.id, rows, now)
        snapshot.links.update({key: (rtype, fhir_id, version) for key, rtype, fhir_id, version in rows})

    def _record_failure(self, plan_id: str, exc: PlanbridgeError) -> None:
        with self.uow:
            if self.uow.plans.get(plan_id) is None:
                return
            state = self.uow.sync.state(plan_id)
            state.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            outcome = getattr(exc, "outcome", None)
            state.last_outcome = outcome if isinstance(outcome, dict) else None
            if state.status != "conflicted":
                state.status = "failed"
            self.uow.commit()

    def _status(self, plan_id: str) -> str:
        with self.uow:
            return self.uow.sync.state(plan_id).status

    def _record(self, snapshot: _Snapshot, answer: dict[str, Any]) -> str:
        """Record what a push wrote, its new merge base and the status it leaves the plan in (returned)."""
        now, plan_id = self.clock(), snapshot.plan.id
        with self.uow.direct():  # prepared statements only (and `on_recorded`'s, e.g. the outbox's finish)
            # (a split push recorded its links as each transaction landed, and the plan is held by this push)
            rows = self._landed(snapshot.bundle, answer)
            named = parse_reference(snapshot.patient_ref)  # `Patient/<id>`, or None: created by the Bundle
            # an absolute reference to another server's Patient is no Patient of ours: never our link
            literal = named.literal if named is not None and named.kind == "relative" else None
            if literal is not None and "patient" not in snapshot.links and all(row[0] != "patient" for row in rows):
                rows.append(("patient", literal[0], literal[1], None))
            self._link(snapshot, rows, now)
            patient = snapshot.links.get("patient")
            # Remember the digest of the Bundle the next push would build for this same plan: by now the
            # Patient is known by its server id, so that Bundle names it literally.
            patient_ref = f"Patient/{patient[1]}" if patient else snapshot.patient_ref
            digest = snapshot.digest
            if patient_ref != snapshot.patient_ref:  # the Bundle created the Patient: it names it differently now
                bundle = plan_to_bundle(
                    snapshot.sent, self.settings.identifier_base, self.settings.mrn_system, patient_ref
                )
                digest = bundle_digest(bundle)
            open_conflicts, version = self.uow.sync.after_push(plan_id)
            if open_conflicts:
                status = "conflicted"
            elif version == snapshot.plan.version and not snapshot.held:
                status = "in_sync"
            else:  # changed since, or a conflict was resolved since: a push is queued for it
                status = "pending"
            self.uow.sync.record_push(plan_id, status, snapshot.sent_document, digest, now, snapshot.carried.through)
            if self._on_recorded is not None:
                self._on_recorded(self.uow)
                self._on_recorded = None
            self.uow.commit()
        return status
