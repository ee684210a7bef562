"""A model-based test of adopting the EHR's own CarePlans, interleaved with everything else, against the real local
FHIR server and the real databases (SQLite, PostgreSQL).

It is the sync model (tests/integration/test_sync_model.py) with adopted plans instead of planbridge's own: its
state machine is subclassed, so every rule and check of it runs here too (team events through the service layer
with the real event schemas, EHR edits of one field with If-Match from a fresh or a stale read or without, an EHR
Goal added to or deleted from a CarePlan, rest-hook notifications delivered in any order, twice or lost, pings,
push, pull, incremental pull, one outbox entry, a worker or a push killed right after its transaction reached the
server, conflicts resolved, the clock moving on, everything settled). What this file adds
(tests/adoption_model_support.AdoptionWorld holds the world):

- the EHR authors, with its own client, Patients known by MRN and CarePlans with 0..3 Goals (each with 0..2
  check-in Observations) and maybe a CareTeam, with the EHR's own identifiers or none, at the start and later
  (a second CarePlan of the same patient); it edits, completes or revokes a CarePlan, adopted or not;
- planbridge adopts through every documented entry point: `SyncEngine.adopt` by patient, by CarePlan id and by
  URL (what `planbridge plans adopt` runs), `POST /plans/adopt` (the three bodies), `pull_patient` (`sync pull
  --patient`); again and again; and documented refusals (unknown MRN or CarePlan: 404, a URL off the server: 400;
  a CarePlan that cannot be a plan, about a Group or a contained Patient: 422 not-adoptable, nothing stored).

Checked after every step, besides the sync model's rules 1-5 (an EHR value is never overwritten by planbridge
unless pulled and merged; an open conflict's path is never changed on the server; no action raises or leaves an
outbox entry failed; settled, plan and server agree):

A. one planbridge plan per adopted EHR CarePlan, `careplan-<id>`, linked to that CarePlan, and no other plan:
   adopting again answers the existing plan, never "new";
B. no duplicate on the server: every CarePlan, CareTeam, Goal and Observation of the patients is the EHR's own
   (still there unless the EHR deleted it) or carries planbridge's identifier for an item the team created: never
   a CarePlan, a CareTeam only for a plan whose CarePlan had none, no copy of an EHR Goal (unless the EHR deleted
   it and a conflict resolution brought it back) or of an EHR check-in, no Practitioner copied from the EHR's
   (by NPI, or under planbridge's member identifier for an EHR person); at most one resource per identifier;
C. an incremental pull (`pull_changed`) pulls every adopted plan whose CarePlan, CareTeam, Goals or check-ins the
   EHR wrote (a new version), or one of whose Goals the EHR deleted, since planbridge last pulled it (docs/sync.md:
   "so an EHR edit to them is pulled like any other"; "Deletions").

Default: 12 examples of up to 20 steps per database, derandomized. A soak, e.g.:

    PLANBRIDGE_ADOPT_MODEL_EXAMPLES=30 PLANBRIDGE_ADOPT_MODEL_STEPS=40 \
        .venv/bin/pytest tests/integration/test_adoption_model.py -x -rA

(`_RANDOM=1` explores new interleavings at the default size, `_SHRINK=1` shrinks a failure.) A failure it finds
is to be reduced to a deterministic test in tests/integration/test_adoption_regressions.py (so far: rule C, a Goal
the EHR edited then deleted, `test_an_incremental_pull_pulls_an_adopted_plan_whose_goal_the_ehr_edited_then_deleted`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis.stateful import RuleBasedStateMachine, rule

import tests.integration.test_sync_model as sync_model
import tests.sync_model_acts as sync_model_acts
from tests.adoption_model_rules import (  # noqa: F401
    ADOPT_REQUESTS,
    ADOPT_WAYS,
    CAREPLAN_STATUSES,
    LETTERS,
    REFUSALS,
    SAVES,
    SHARING,
    UNADOPTABLE,
    UNADOPTABLE_WAYS,
    UNADOPTED_EDITS,
    AdoptionModelRules,
    Pulls,
    Spec,
    careplan_spec,
)
from tests.adoption_model_support import AdoptionWorld
from tests.model_support import ModelRun

RUN = ModelRun.from_env("PLANBRIDGE_ADOPT_MODEL", examples=12, steps=20)


def adoption_machine(engine: Any, fhir_base_url: str, stats: Counter, pulls: Pulls) -> type[RuleBasedStateMachine]:
    """Return the state machine class for one database and FHIR server, counting into `stats`."""

    base_machine = sync_model.sync_machine(engine, fhir_base_url, stats)

    class AdoptionModel(AdoptionModelRules, base_machine):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.world = AdoptionWorld(engine, fhir_base_url)
            pulls.world = self.world
            self.mrns: list[str] = []
            self.ehr_copies_careplan: dict[str, dict[str, Any]] = {}
            self.unpulled: set[str] = set()  # adopted plans the EHR edited since planbridge last pulled them

        def team(self, plan_id: str, event_type: str, **data: Any) -> None:
            before = Counter(stats)
            super().team(plan_id, event_type, **data)
            for status in (409, 422):  # refusals other than the sync model's 400: which, and why
                if stats[f"team {status}"] > before[f"team {status}"]:
                    detail = re.sub(r"(goal|step|member)[-\w]*", r"\1", self.log[-1].split(" -> ", 1)[-1])[:90]
                    stats[f"team {status} {event_type}: {detail}"] += 1

        @rule()
        def pull_changed(self) -> None:
            """An incremental pull, which must pull every adopted plan the EHR edited since it was last pulled."""
            self.begin("pull_changed")
            waiting = set(self.unpulled)
            stats["pull_changed with EHR edits waiting"] += bool(waiting)
            outcomes = self.planbridge("incremental pull", lambda: self.world.sync.pull_changed().outcomes, "changed")
            missed = sorted(waiting - set(outcomes))
            if missed:
                self.fail(
                    f"rule C: the incremental pull pulled {sorted(outcomes)}, not {missed}, which the EHR edited "
                    "since they were last pulled"
                )
            self.done()

        def author(self, mrn: str, spec: Spec) -> str:
            goals, checkins, careteam, own, created, share, activities = spec
            others = [c for c in self.world.careplans.values() if c.mrn == mrn]
            teams = [c.careteam for c in others if c.careteam]
            shared_goals = [g for c in others for g in c.goals if g not in self.world.deleted]
            shared_team = teams[0] if share == "its CareTeam" and teams else None
            shared_goal = shared_goals[0] if share == "a Goal" and shared_goals else None
            authored = self.world.ehr_careplan(
                mrn,
                goals,
                checkins,
                careteam,
                own,
                created,
                shared_team=shared_team,
                shared_goal=shared_goal,
                activities=activities,
            )
            self.server_changed = True
            team = f"CareTeam {shared_team} shared" if shared_team else "a CareTeam" if careteam else "no CareTeam"
            self.note(
                f"EHR authors CarePlan/{authored.id} for {authored.patient}: {goals} goals x {checkins} check-ins"
                f"{f' and {shared_goal} shared' if shared_goal else ''}, {team}, "
                f"{'own identifiers' if own else 'no identifiers'}"
            )
            stats[f"ehr shares {share}"] += bool(shared_team or shared_goal)
            self.world.tick()
            return authored.id

        def adopt(self, how: str, careplan_id: str) -> None:
            authored = self.world.careplans[careplan_id]
            by_patient = how in ("engine --patient", "api patient_mrn", "sync pull --patient")
            expected = (
                {c.plan_id for c in self.world.careplans.values() if c.mrn == authored.mrn}
                if by_patient
                else {authored.plan_id}
            )
            known = set(self.plans)
            outcomes = self.planbridge(
                f"adopt ({how}) {'patient of ' if by_patient else ''}CarePlan/{careplan_id}",
                lambda: self.adopt_with(how, careplan_id),
                "adopt",
            )
            stats[f"adopt {how}"] += 1
            if set(outcomes) != expected:
                self.fail(f"rule A: adopting ({how}) answered {sorted(outcomes)}, expected {sorted(expected)}")
            for plan_id, outcome in sorted(outcomes.items()):
                stats[f"adopt outcome {outcome}"] += 1
                if plan_id in known and outcome == "new":
                    self.fail(f"rule A: adopting {plan_id} again answered 'new'")
                if plan_id not in known and outcome != "new":
                    self.fail(f"rule A: the first adoption of {plan_id} answered {outcome!r}, not 'new'")
                if plan_id not in known:
                    self.register(plan_id)

        def teardown(self) -> None:
            for protected in self.protected.values():  # how far rule 1 got: EHR values pulled, and merged
                stats["ehr values held"] += len(protected)
                stats["ehr values pulled"] += sum(held.seen for held in protected.values())
                stats["ehr values merged"] += sum(held.merged for held in protected.values())
            super().teardown()

    return AdoptionModel


@pytest.fixture
def pulls(monkeypatch: pytest.MonkeyPatch) -> Pulls:
    """The sync model's rule 1 reads a pull of an adopted plan as AdoptionWorld.pulls does (this test only)."""
    reader = Pulls()
    monkeypatch.setattr(sync_model_acts, "plan_pulls", reader)
    return reader


def test_adoption_keeps_its_promises_whatever_the_interleaving(engine, fhir_base_url, record_property, request, pulls):
    # As the sync model: SQLite against the medplum profile (transaction limits, 412 on a stale If-Match),
    # PostgreSQL against the hapi one (409). With $FHIR_TEST_SERVER_URL both run against that server.
    profile = "hapi" if engine.url.get_backend_name() == "postgresql" else "medplum"
    if not os.environ.get("FHIR_TEST_SERVER_URL"):
        fhir_base_url = request.getfixturevalue(f"fhir_{profile}_url")
    stats: Counter = Counter()
    label = f"adoption model on {engine.url.get_backend_name()}, {profile} profile"
    RUN.run(adoption_machine(engine, fhir_base_url, stats, pulls), stats, record_property, label)
