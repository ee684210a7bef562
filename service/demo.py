"""`planbridge demo`: a short collaborative story against the running service and its FHIR server.

A team creates a plan, the patient proposes a goal, the dietitian and the psychiatrist agree, a
check-in is recorded and the patient rates the goal (Goal-Based Outcomes, 0-10) at the start and at a
review, which `/plans/{id}/outcomes` sums up; a clinician then puts the goal on hold in the EHR, and a team endpoint
subscribed to plan changes receives it as a signed webhook. The demo's own endpoint is a small HTTP
server on 127.0.0.1, so the service must admit loopback (`PLANBRIDGE_OUTBOUND_ALLOW`, as `planbridge
dev` sets it).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import click
import requests
from standardwebhooks.webhooks import Webhook

from mappings.codes import OUTCOME_SCALE_SYSTEM
from service.signing import sign_headers


class Receiver:
    """A team system's webhook endpoint: records what arrives, answers 204."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.received.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/planbridge-events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Demo:
    """Talks to planbridge as a team system and an operator would, and to the FHIR server as the EHR."""

    def __init__(self, url: str, fhir: str, secret: str, api_key: str, say: Callable[[str], None]) -> None:
        self.url, self.fhir, self.secret, self.say = url.rstrip("/"), fhir.rstrip("/"), secret, say
        self.http = requests.Session()
        self.api = {"Authorization": f"Bearer {api_key}"}
        self.plan_id = f"demo-{uuid.uuid4().hex[:8]}"
        self.patient = {"mrn": f"DEMO-{uuid.uuid4().hex[:6]}", "display_name": "Sam Example"}

    def event(self, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(
            {
                "type": event_type,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "data": {"plan_id": self.plan_id, **data},
            }
        ).encode()
        answer = self.http.post(
            f"{self.url}/webhooks/team",
            data=body,
            timeout=30,
            headers={**sign_headers(self.secret, body), "Content-Type": "application/json"},
        )
        if answer.status_code != 202:
            raise click.ClickException(f"{event_type} was refused: {answer.status_code} {answer.text}")
        version = answer.json()["plan_version"]
        self.say(f"  {event_type:<20} -> 202, plan version {version}")
        return answer.json()

    def wait_in_sync(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.http.get(f"{self.url}/plans/{self.plan_id}/sync", headers=self.api, timeout=10).json()
            if state.get("status") == "in_sync":
                return state
            time.sleep(0.3)
        raise click.ClickException("the plan did not reach the FHIR server in time: is `planbridge worker` running?")

    def fhir_goal(self, identifier_system: str) -> dict[str, Any]:
        found = self.http.get(
            f"{self.fhir}/Goal", timeout=10, params={"identifier": f"{identifier_system}|{self.plan_id}/goal-walk"}
        ).json()
        return found["entry"][0]["resource"]

    def outcome_observations(self, goal: dict[str, Any]) -> tuple[int, int]:
        """Return how many of the Goal's outcomeReference Observations are check-ins and how many ratings."""
        check_ins = ratings = 0
        for ref in goal.get("outcomeReference", []):
            observation = self.http.get(f"{self.fhir}/{ref['reference']}", timeout=10).json()
            systems = {c.get("system") for c in observation.get("code", {}).get("coding", [])}
            if OUTCOME_SCALE_SYSTEM in systems:
                ratings += 1
            else:
                check_ins += 1
        return check_ins, ratings

    def outcomes(self) -> dict[str, Any]:
        answer = self.http.get(f"{self.url}/plans/{self.plan_id}/outcomes", headers=self.api, timeout=10)
        if answer.status_code != 200:
            raise click.ClickException(f"/outcomes answered {answer.status_code} {answer.text[:200]}")
        return answer.json()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _acceptances(goal: dict[str, Any]) -> list[str]:
    out = []
    for ext in goal.get("extension", []):
        if ext.get("url", "").endswith("goal-acceptance"):
            parts = {p["url"]: p for p in ext.get("extension", [])}
            who = parts.get("individual", {}).get("valueReference", {})
            out.append(f"{who.get('display') or who.get('reference')}: {parts.get('status', {}).get('valueCode')}")
    return out


def run_demo(url: str, fhir: str, secret: str, api_key: str, identifier_base: str, say: Callable[[str], None]) -> None:
    """Tell the story, step by step."""
    demo = Demo(url, fhir, secret, api_key, say)
    receiver = Receiver()
    subscription_id: int | None = None
    try:
        say(f"1. A team system subscribes to plan changes at {receiver.url}")
        sub = demo.http.post(
            f"{demo.url}/subscriptions",
            headers=demo.api,
            timeout=10,
            json={"url": receiver.url, "event_types": ["*"], "description": "demo team system"},
        )
        if sub.status_code != 201:
            raise click.ClickException(f"subscription refused: {sub.status_code} {sub.text}")
        sub_secret, subscription_id = sub.json()["secret"], sub.json()["id"]
        say(f"2. The team opens plan {demo.plan_id} and the patient proposes a goal")
        demo.event(
            "plan.created",
            {
                "patient": demo.patient,
                "title": "Getting back to everyday life",
                "what_matters": "Being well enough to look after my daughter",
            },
        )
        for member_id, role, name in (
            ("dietitian", "dietitian", "Owen Hughes"),
            ("psychiatrist", "psychiatrist", "Dr Ana Ruiz"),
        ):
            demo.event("member.joined", {"member_id": member_id, "kind": "practitioner", "role": role, "name": name})
        demo.event(
            "goal.proposed",
            {
                "patient": demo.patient,
                "goal": {
                    "id": "goal-walk",
                    "description": "Walk to the park with my daughter on Saturdays",
                    "priority": "high-priority",
                    "proposed_by": {"kind": "patient"},
                    "targets": [
                        {
                            "measure": {"system": "http://loinc.org", "code": "41950-7", "display": "Steps per day"},
                            "value": 4000,
                            "comparator": ">=",
                            "unit": "/d",
                        }
                    ],
                },
            },
        )
        say("3. The dietitian and the psychiatrist agree; a check-in is recorded, and Sam rates the goal (GBO 0-10)")
        for member_id in ("patient", "dietitian", "psychiatrist"):
            demo.event("agreement.recorded", {"goal_id": "goal-walk", "member_id": member_id, "status": "agree"})
        demo.event(
            "checkin.recorded",
            {
                "goal_id": "goal-walk",
                "checkin_id": "week-1",
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "value": 3200,
                "unit": "/d",
                "note": "Halfway there",
                "recorded_by": "patient",
            },
        )
        six_weeks_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 42 * 86400))
        for occasion, score, at in (("baseline", 3, six_weeks_ago), ("review", 6, _now())):
            demo.event(
                "outcome.recorded",
                {
                    "goal_id": "goal-walk",
                    "scale": "gbo",
                    "score": score,
                    "occasion": occasion,
                    "rated_by": "patient",
                    "at": at,
                },
            )
        demo.wait_in_sync()
        goal = demo.fhir_goal(f"{identifier_base}/goal")
        check_ins, ratings = demo.outcome_observations(goal)
        say(
            f"4. On the FHIR server: Goal/{goal['id']} version {goal['meta']['versionId']}, "
            f"{goal['lifecycleStatus']}; agreements: {', '.join(_acceptances(goal))}; "
            f"check-ins: {check_ins}; outcome ratings: {ratings} (Observations in outcomeReference)"
        )
        outcomes = demo.outcomes()
        for entry in outcomes["goals"]:
            reliable = "a reliable change" if entry["reliable_change"] else "not yet a reliable change"
            say(
                f"   /outcomes: {entry['goal_id']} {entry['scale'].upper()} {entry['baseline']} -> {entry['latest']} "
                f"({entry['change']:+d}: {reliable}, threshold {outcomes['reliable_change']['gbo']})"
            )
        say("5. A clinician puts the goal on hold in the EHR")
        goal.update(lifecycleStatus="on-hold", statusReason="knee injury; resume after physiotherapy")
        demo.http.put(f"{demo.fhir}/Goal/{goal['id']}", json=goal, timeout=10).raise_for_status()
        _await_ehr_change(receiver, sub_secret, say)
        say("7. Look for yourself:")
        say(f'   curl -H "Authorization: Bearer $(cat var/api-key)" {demo.url}/plans/{demo.plan_id}')
        say(f'   curl -H "Authorization: Bearer $(cat var/api-key)" {demo.url}/plans/{demo.plan_id}/sync')
        say(f'   curl -H "Authorization: Bearer $(cat var/api-key)" {demo.url}/plans/{demo.plan_id}/outcomes')
        say(f"   curl '{demo.fhir}/Goal/{goal['id']}/_history'")
    except requests.RequestException as exc:  # nothing listens there (a wrong --url): one line, no traceback
        raise click.ClickException(f"could not reach {_origin(exc, demo.url)}: {type(exc).__name__}") from None
    finally:
        if subscription_id is not None:
            _unsubscribe(demo, subscription_id, say)
        receiver.close()


def _origin(exc: requests.RequestException, default: str) -> str:
    """The scheme and host of the URL a request failed on (never its path or query)."""
    url = urlsplit(getattr(exc.request, "url", None) or default)
    return f"{url.scheme}://{url.netloc}"


def _unsubscribe(demo: Demo, subscription_id: int, say: Callable[[str], None]) -> None:
    """Remove the demo's subscription: its endpoint goes with the demo, and every later delivery would fail."""
    try:
        gone = demo.http.delete(f"{demo.url}/subscriptions/{subscription_id}", headers=demo.api, timeout=10)
    except requests.RequestException as exc:
        gone = None
        reason = type(exc).__name__
    else:
        reason = f"{gone.status_code} {gone.text[:200]}"
    if gone is not None and gone.status_code in (200, 204, 404):
        say(f"The demo's team-system subscription {subscription_id} is removed (its endpoint is gone with it).")
    else:
        say(
            f"Could not remove the demo's subscription {subscription_id} ({reason}): "
            f"DELETE {demo.url}/subscriptions/{subscription_id} with the API key"
        )


def _await_ehr_change(receiver: Receiver, secret: str, say: Callable[[str], None], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            headers, body = receiver.received.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        event = Webhook(secret).verify(body, headers)  # raises if the signature is wrong
        if event["type"] == "ehr.plan_changed":
            change = json.dumps(event["data"].get("change"))[:300]
            say(
                f"6. The team system received {event['type']} (sequence {event['data']['sequence']}, "
                f"signature verified): {change}"
            )
            return
    raise click.ClickException(
        "no EHR change arrived: is the FHIR server's Subscription active (planbridge subscribe)?"
    )
