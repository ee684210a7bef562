"""Constants, `Pulls` and the closure-free rules and checks of the adoption model
(tests/integration/test_adoption_model.py), moved out of that file unchanged; it imports the names back.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule

from service.domain.errors import InvalidInput, NotFound
from service.fhir.errors import FhirError
from service.store.uow import UnitOfWork
from service.sync.adopt import NotAdoptable, Target, adoption_answer, careplan_target
from tests.adoption_model_support import API_KEY, AdoptionWorld, careplan_id_of
from tests.integration.test_sync_model import Protected
from tests.sync_model_support import diff_paths, get_at, related

ADOPT_REQUESTS = 6  # the Patient by MRN, the CarePlans with their includes, the check-ins (and a page more)
ADOPT_WAYS = [
    "engine --patient",
    "engine --careplan",
    "engine --url",
    "api patient_mrn",
    "api careplan",
    "api url",
    "sync pull --patient",
]
REFUSALS = ["api unknown mrn", "api unknown careplan", "api url elsewhere", "engine unknown careplan"]
# a CarePlan on the server that cannot be a plan (about a Group; about a contained Patient, without an MRN or a
# reference to the server's Patient): a refusal. (A server Patient without an MRN is adoptable: it is named by id.)
UNADOPTABLE = ["group", "contained patient"]
UNADOPTABLE_WAYS = ["api careplan", "api url", "engine --careplan", "engine --url"]
CAREPLAN_STATUSES = ["revoked", "completed", "active", "on-hold"]
SAVES = ["if-match", "no-if-match", "stale-if-match"]
UNADOPTED_EDITS = ["title", "add goal", "delete goal"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SHARING = ["nothing", "nothing", "its CareTeam", "a Goal"]

careplan_spec = st.tuples(
    st.integers(0, 3),  # goals
    st.integers(0, 2),  # check-ins per goal
    st.booleans(),  # a CareTeam
    st.booleans(),  # the EHR's own identifiers
    st.booleans(),  # `created`
    st.sampled_from(SHARING),  # what it shares with the patient's other CarePlans (when there is one)
    st.booleans(),  # activities (steps), each naming a Goal
)
Spec = tuple[int, int, bool, bool, bool, str, bool]


class Pulls:
    """What the sync model's rule 1 takes for a pull of a plan: the current world's reading (see
    AdoptionWorld.pulls), installed in place of tests.sync_model_support.plan_pulls for this test only."""

    world: AdoptionWorld | None = None

    def __call__(self, log: list[tuple[str, str, Any, str]], plan_id: str, base: str) -> bool:
        assert self.world is not None
        return self.world.pulls(log, plan_id, base)


class AdoptionModelRules:
    """The rules and checks of AdoptionModel that need nothing of `adoption_machine`'s closure."""

    # ------------------------------------------------------------------ helpers

    def request_budget(self, budget: str, plans: list[str]) -> int:
        if budget == "adopt":
            return ADOPT_REQUESTS + sum(len(self.server[pid].dangling) for pid in self.plans)
        return super().request_budget(budget, plans)

    def ehr_write(self, plan_id: str, what: str, write: Any) -> None:
        before = {p: self.server[p] for p in self.plans if p != plan_id}
        was = self.server[plan_id].versions()
        super().ehr_write(plan_id, what, write)
        self.edited(plan_id, was)
        self.shared_written(before, what)

    def edited(self, plan_id: str, was: dict[str, str]) -> None:
        """Rule C's bookkeeping: the EHR wrote a new version of something the plan reaches, or deleted a Goal it
        reaches (an incremental pull reads the Goals deleted since its cursor: docs/sync.md, "Deletions")."""
        now = self.server[plan_id].versions()
        deleted = [key for key in was if key.startswith("Goal/") and key not in now]
        if deleted or any(was.get(key) != version for key, version in now.items()):
            self.unpulled.add(plan_id)

    def planbridge(
        self,
        what: str,
        action: Any,
        budget: str,
        resolving: int | None = None,
        plans: list[str] | None = None,
    ) -> Any:
        log_start = len(self.world.client.log)
        result = super().planbridge(what, action, budget, resolving=resolving, plans=plans)
        new_log = self.world.client.log[log_start:]
        self.unpulled -= {p for p in self.unpulled if self.world.pulls(new_log, p, self.world.base)}
        if plans is not None:
            # A plan's push may write a resource another plan reaches too (a shared CareTeam or Goal). The
            # sync model checks the plans an action may touch; the others' reading follows here, and an EHR
            # value replaced there is no longer held (planbridge took it into account through the plan that
            # wrote it: that plan's rule 1 says whether it did).
            for plan_id in [p for p in self.plans if p not in plans]:
                now = self.world.server(plan_id)
                if now.versions() == self.server[plan_id].versions():
                    continue
                moved = [k for k, v in now.versions().items() if self.server[plan_id].versions().get(k) != v]
                self.note(f"  ... plan {self.names[plan_id]} reaches what it wrote too: {moved}")
                self.server[plan_id] = now
                protected = self.protected[plan_id]
                for path in [p for p, held in protected.items() if get_at(now.doc, p) != held.value]:
                    del protected[path]
                for key in moved:
                    if key in now.resources:
                        self.queue_notification(now.resources[key])
        return result

    def shared_written(self, before: dict[str, Any], what: str) -> None:
        """An EHR write to a resource other plans reach too (a shared CareTeam or Goal): it is the EHR's value in
        each of them (rule 1), as the sync model's ehr_write records it for the plan it wrote to."""
        for plan_id, was in before.items():
            now = self.world.server(plan_id)
            if now.versions() == was.versions():
                continue
            self.server[plan_id] = now
            self.edited(plan_id, was.versions())
            paths = diff_paths(was.doc, now.doc) if was.doc and now.doc else ["*"]
            protected = self.protected[plan_id]
            for path in paths:
                for old in [p for p in protected if related(p, path)]:
                    del protected[old]
                protected[path] = Protected(get_at(now.doc, path), self.step, what, "(shared)")
            self.note(f"  ... plan {self.names[plan_id]} reaches it too: paths {paths[:4]}")

    def register(self, plan_id: str) -> None:
        """A plan planbridge adopted now: the model follows it from here on."""
        self.plans.append(plan_id)
        self.names[plan_id] = LETTERS[(len(self.plans) - 1) % len(LETTERS)]
        self.server[plan_id] = self.world.server(plan_id)
        if self.server[plan_id].doc is None:
            self.fail(f"adopted plan {plan_id}: no CarePlan on the server")
        self.agreed[plan_id] = copy.deepcopy(self.server[plan_id].doc)
        self.protected[plan_id] = {}
        self.note(f"plan {self.names[plan_id]} = {plan_id} adopted")

    def adopt_with(self, how: str, careplan_id: str) -> dict[str, str]:
        """Adopt by one entry point; return the outcomes it answered, by plan id."""
        world = self.world
        authored = world.careplans[careplan_id]
        url = f"{world.base_url}/CarePlan/{careplan_id}"
        if how == "engine --patient":
            return world.sync.adopt(Target(mrn=authored.mrn)).outcomes
        if how == "engine --careplan":
            return world.sync.adopt(careplan_target(f"CarePlan/{careplan_id}", world.base_url)).outcomes
        if how == "engine --url":
            return world.sync.adopt(careplan_target(url, world.base_url)).outcomes
        if how == "sync pull --patient":
            return world.sync.pull_patient(authored.mrn).outcomes
        body = {
            "api patient_mrn": {"patient_mrn": authored.mrn},
            "api careplan": {"careplan": careplan_id},
            "api url": {"url": url},
        }[how]
        answer = world.http.post("/plans/adopt", json=body, headers={"X-API-Key": API_KEY})
        if answer.status_code != 200:
            raise AssertionError(f"POST /plans/adopt {body} answered {answer.status_code}: {answer.get_data()}")
        data = answer.get_json()
        if set(data) != {"adopted", "requests", "notifications"}:
            raise AssertionError(f"POST /plans/adopt answered {sorted(data)}")
        return {a["plan_id"]: a["outcome"] for a in data["adopted"]}

    # ------------------------------------------------------------------ set-up

    @initialize(
        careplans=st.lists(careplan_spec, min_size=1, max_size=2),
        two_patients=st.booleans(),
        how=st.sampled_from(ADOPT_WAYS),
    )
    def start(self, careplans: list[Spec], two_patients: bool, how: str) -> None:
        self.begin("start")
        self.mrns = [self.world.ehr_patient() for _ in range(2 if two_patients else 1)]
        ids = [self.author(self.mrns[n % len(self.mrns)], spec) for n, spec in enumerate(careplans)]
        self.adopt(how, ids[0])
        self.check_agreement("after the first adoption")
        self.done()

    # ------------------------------------------------------------------ the EHR authoring

    def careplan_at(self, which: int) -> str:
        ids = sorted(self.world.careplans, key=lambda i: (len(i), i))
        return ids[which % len(ids)]

    @rule(patient=st.integers(0, 1), spec=careplan_spec)
    def ehr_author_careplan(self, patient: int, spec: Spec) -> None:
        """The EHR authors another CarePlan for a patient (often one with an adopted plan already)."""
        self.begin("ehr author careplan")
        careplan_id = self.author(self.mrns[patient % len(self.mrns)], spec)
        careplan = self.world.ehr.request("GET", f"CarePlan/{careplan_id}").json()
        self.queue_notification(careplan)
        self.done()

    @rule(which=st.integers(0, 5), status=st.sampled_from(CAREPLAN_STATUSES), save=st.sampled_from(SAVES))
    def ehr_careplan_status(self, which: int, status: str, save: str) -> None:
        """The EHR completes, revokes, holds or reactivates a CarePlan, adopted or not."""
        self.begin("ehr careplan status")
        careplan_id = self.careplan_at(which)
        key = f"CarePlan/{careplan_id}"
        stale = save == "stale-if-match" and key in self.ehr_copies_careplan
        read = self.ehr_copies_careplan[key] if stale else self.world.ehr.request("GET", key).json()
        self.ehr_copies_careplan[key] = copy.deepcopy(read)
        resource = {**copy.deepcopy(read), "status": status}
        if_match = None if save == "no-if-match" else resource["meta"]["versionId"]
        what = f"EHR sets {key} status {status} ({'stale ' if stale else ''}v{read['meta']['versionId']}, {save})"
        plan_id = self.world.careplans[careplan_id].plan_id
        if plan_id in self.plans:
            self.ehr_write(plan_id, what, lambda: self.world.ehr_put(resource, if_match))
        else:
            self.ehr_unadopted(what, lambda: self.world.ehr_put(resource, if_match))
        self.done()

    def ehr_unadopted(self, what: str, write: Any) -> None:
        before = dict(self.server)
        try:
            written = write()
        except FhirError as exc:
            self.note(f"{what} (not adopted) -> refused {type(exc).__name__} (HTTP {exc.status})")
            return
        self.server_changed = True
        if isinstance(written, dict) and "meta" in written:
            self.queue_notification(written)
        self.note(f"{what} (not adopted) -> done")
        self.shared_written(before, what)
        self.world.tick()

    @rule(which=st.integers(0, 5), action=st.sampled_from(["title", "add goal", "delete goal"]), n=st.integers(0, 4))
    def ehr_edit_unadopted(self, which: int, action: str, n: int) -> None:
        """The EHR edits a CarePlan planbridge has not adopted (yet)."""
        self.begin("ehr edit unadopted")
        careplan_id = self.careplan_at(which)
        authored = self.world.careplans[careplan_id]
        if authored.plan_id in self.plans:
            self.note(f"EHR edit of unadopted CarePlan/{careplan_id}: adopted already")
            self.done()
            return
        if action == "title":
            self.ehr_unadopted(
                f"EHR retitles CarePlan/{careplan_id}",
                lambda: self.world.ehr_edit(f"CarePlan/{careplan_id}", lambda c: c.update(title=f"EHR title {n}")),
            )
        elif action == "add goal":

            def add() -> dict[str, Any]:
                goal = self.world.ehr_add_goal(authored.plan_id, f"EHR goal {n}")
                authored.goals.append(f"Goal/{goal['id']}")
                self.queue_notification(goal)
                return self.world.ehr.request("GET", f"CarePlan/{careplan_id}").json()

            self.ehr_unadopted(f"EHR adds a Goal to CarePlan/{careplan_id}", add)
        else:
            live = [g for g in authored.goals if g not in self.world.deleted]
            if not live:
                self.note(f"EHR delete: CarePlan/{careplan_id} has no Goal")
            else:
                key = live[n % len(live)]
                self.ehr_unadopted(
                    f"EHR deletes {key} of CarePlan/{careplan_id}",
                    lambda: self.world.ehr_delete(key) or {"deleted": key},
                )
        self.done()

    # ------------------------------------------------------------------ planbridge adopting

    @rule(which=st.integers(0, 5), how=st.sampled_from(ADOPT_WAYS))
    def adopt_rule(self, which: int, how: str) -> None:
        self.begin("adopt")
        self.adopt(how, self.careplan_at(which))
        self.done()

    @rule(how=st.sampled_from(REFUSALS))
    def adopt_refused(self, how: str) -> None:
        """What cannot be adopted is refused as documented (404 nothing found, 400 bad input), changing nothing."""
        self.begin("adopt refused")
        world = self.world
        expected = {
            "api unknown mrn": ({"patient_mrn": "no-such-mrn"}, 404, "not-found"),
            "api unknown careplan": ({"careplan": "CarePlan/no-such-careplan"}, 404, "not-found"),
            "api url elsewhere": ({"url": "https://elsewhere.example/fhir/CarePlan/1"}, 400, "invalid-input"),
        }

        def refused() -> str:
            if how == "engine unknown careplan":
                try:
                    world.sync.adopt(careplan_target("CarePlan/no-such-careplan", world.base_url))
                except NotFound as exc:
                    return f"NotFound: {exc.code}"
                except InvalidInput as exc:
                    return f"unexpected InvalidInput {exc}"
                return "adopted"
            body = expected[how][0]
            answer = world.http.post("/plans/adopt", json=body, headers={"X-API-Key": API_KEY})
            return f"{answer.status_code} {answer.content_type} {answer.get_json().get('type', '')}"

        outcome = self.planbridge(f"adopt refused ({how})", refused, "adopt")
        if how == "engine unknown careplan":
            if not outcome.startswith("NotFound"):
                self.fail(f"adopting an unknown CarePlan through the engine: {outcome}, not NotFound")
        else:
            _, status, problem = expected[how]
            code, content_type, kind = outcome.split(" ")
            if int(code) != status or content_type != "application/problem+json" or not kind.endswith(problem):
                self.fail(f"POST /plans/adopt ({how}) answered {outcome}, expected {status} problem {problem}")
        self.done()

    @rule(subject=st.sampled_from(UNADOPTABLE), how=st.sampled_from(UNADOPTABLE_WAYS))
    def adopt_unadoptable(self, subject: str, how: str) -> None:
        """A CarePlan that cannot be a plan is a refusal naming it and CarePlan.subject (422 not-adoptable, or
        NotAdoptable from `adoption_answer`, what the CLI runs), and nothing is stored (rule A)."""
        self.begin("adopt unadoptable")
        world = self.world
        if subject == "group":
            group = world.ehr.request("POST", "Group", json={"resourceType": "Group", "type": "person", "actual": True})
            group = group.json()
            about = f"Group/{group['id']}"
            careplan = {"subject": {"reference": about}}
        else:
            about = "#p"
            careplan = {"subject": {"reference": about}, "contained": [{"resourceType": "Patient", "id": "p"}]}
        careplan = {"resourceType": "CarePlan", "status": "active", "intent": "plan", **careplan}
        # not world.ehr_create: rule B reads the EHR's resources by patient, and this one is about none
        careplan = world.ehr.request("POST", "CarePlan", json=careplan).json()
        careplan_id = careplan["id"]
        self.queue_notification(careplan)
        named = careplan_id if how.endswith("careplan") else f"{world.base_url}/CarePlan/{careplan_id}"

        def refused() -> str:
            if how.startswith("engine"):
                result = world.sync.adopt(careplan_target(named, world.base_url))
                try:
                    adoption_answer(result.outcomes, result.refusals)
                except NotAdoptable as exc:
                    return f"NotAdoptable {exc.refused}"
                return f"adopted {result.outcomes}"
            body = {"careplan" if how == "api careplan" else "url": named}
            answer = world.http.post("/plans/adopt", json=body, headers={"X-API-Key": API_KEY})
            got = answer.get_json()
            return f"{answer.status_code} {got.get('type', '')} {got.get('refused')}"

        outcome = self.planbridge(f"adopt {how} of a CarePlan about a {about}", refused, "adopt")
        wanted = "NotAdoptable" if how.startswith("engine") else "422 urn:planbridge:problem:not-adoptable"
        if (
            not outcome.startswith(wanted)
            or f"CarePlan/{careplan_id}" not in outcome
            or "CarePlan.subject" not in outcome
        ):
            self.fail(f"adopting CarePlan/{careplan_id} about {about} ({how}): {outcome}, not {wanted} naming it")
        self.done()

    # ------------------------------------------------------------------ after every step (rules A, B)

    @invariant()
    def after_every_step(self) -> None:
        if not self.plans:
            return
        check_server = self.server_changed
        super().after_every_step()
        self.clean = False
        self.check_plans()
        if check_server:
            self.check_no_copies()
        self.clean = True

    def check_plans(self) -> None:
        """Rule A: one plan per adopted CarePlan, named and linked after it; no plan the model did not adopt."""
        with UnitOfWork(self.world.db) as uow:
            ids = set(uow.plans.ids())
            links = {pid: uow.links.get(pid, "careplan") for pid in ids}
        if ids != set(self.plans):
            self.fail(f"rule A: the database holds plans {sorted(ids)}, adopted were {sorted(self.plans)}")
        for plan_id, link in links.items():
            if link is None or link.resource_type != "CarePlan" or link.fhir_id != careplan_id_of(plan_id):
                shown = None if link is None else f"{link.resource_type}/{link.fhir_id}"
                self.fail(f"rule A: plan {plan_id}'s CarePlan link names {shown}")

    def check_no_copies(self) -> None:
        """Rule B: every resource of the patients is the EHR's own or one planbridge-created item."""
        world = self.world
        base = world.base
        careplan_of = {c.plan_id: c for c in world.careplans.values()}
        seen: set[str] = set()
        problems: list[str] = []
        for patient in sorted(set(world.patients.values())):
            for rtype, resources in world.patient_resources(patient).items():
                for resource in resources:
                    key = f"{rtype}/{resource['id']}"
                    seen.add(key)
                    if resource["id"] in world.created[rtype]:
                        continue
                    kind = {"CarePlan": "plan", "CareTeam": "careteam", "Goal": "goal", "Observation": "checkin"}
                    values = [
                        i.get("value", "")
                        for i in resource.get("identifier", [])
                        if i.get("system") == f"{base}/{kind[rtype]}"
                    ]
                    if len(values) != 1:
                        problems.append(f"{key} is neither the EHR's nor planbridge's ({values})")
                        continue
                    value = values[0]
                    plan_id, _, item = value.partition("/")
                    if plan_id not in self.plans:
                        problems.append(f"{key} carries {value}, of no adopted plan")
                    elif rtype == "CarePlan":
                        problems.append(f"{key} is a new CarePlan for adopted plan {plan_id}")
                    elif rtype == "CareTeam" and careplan_of[plan_id].careteam is not None:
                        problems.append(
                            f"{key} is a new CareTeam for {plan_id}, whose CarePlan has {careplan_of[plan_id].careteam}"
                        )
                    elif rtype == "Goal":
                        ehr = re.fullmatch(r"goal-(.+)", item)
                        if (
                            ehr
                            and ehr.group(1) in world.created["Goal"]
                            and f"Goal/{ehr.group(1)}" not in world.deleted
                        ):
                            problems.append(f"{key} is a copy of the EHR's Goal/{ehr.group(1)} ({value})")
                    elif rtype == "Observation":
                        ehr = re.fullmatch(r".*/obs-(.+)", item)
                        if ehr and ehr.group(1) in world.created["Observation"]:
                            problems.append(f"{key} is a copy of the EHR's Observation/{ehr.group(1)} ({value})")
        for rtype in ("CarePlan", "CareTeam", "Goal", "Observation"):
            for rid in sorted(world.created[rtype]):
                key = f"{rtype}/{rid}"
                if key not in seen and key not in world.deleted:
                    problems.append(f"the EHR's {key} is gone from the server")
        people = world.people()
        for value in people.pop("planbridge"):
            if not value.partition("/")[2].startswith("member-m"):  # only the team's members are planbridge's
                problems.append(f"a Practitioner carries {value}: a copy of one of the EHR's people")
        problems += [f"Practitioners {ids} carry the EHR's NPI {n}" for n, ids in people.items() if len(ids) > 1]
        if problems:
            self.fail("rule B: " + "; ".join(problems))
