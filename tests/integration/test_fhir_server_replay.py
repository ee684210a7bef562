"""The local FHIR server's recording (PLANBRIDGE_FHIR_RECORD) and its replay (fhir-server/bench/replay.mjs).

A replay answers every recorded request again with the clock fixed per request and UUIDs counted, so two
replays of one recording are byte for byte alike: that is how a change to fhir-server/lib is shown to answer
exactly as before (replay with `--lib` of the old and the new code, compare the `--out` files), and how the
server's CPU per transaction is measured without the HTTP client and the machine's noise in the way.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from service.devfhir import SERVER_DIR, LocalFhirServer

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
SYSTEM = "urn:planbridge:replay-test"


def transaction(value: str) -> dict:
    """A Patient created by a conditional POST and a Goal naming it: the shape of a pushed plan."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:9d1c4a52-0f1e-4d7e-9a57-7a1f0c2b3d41",
                "resource": {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}]},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{value}"},
            },
            {
                "resource": {
                    "resourceType": "Goal",
                    "identifier": [{"system": SYSTEM, "value": f"{value}-goal"}],
                    "lifecycleStatus": "active",
                    "description": {"text": "Walk"},
                    "subject": {"reference": "urn:uuid:9d1c4a52-0f1e-4d7e-9a57-7a1f0c2b3d41"},
                },
                "request": {"method": "PUT", "url": f"Goal?identifier={SYSTEM}|{value}-goal"},
            },
        ],
    }


def replay(recording: Path, out: Path) -> dict:
    result = subprocess.run(
        ["node", "bench/replay.mjs", str(recording), "--out", str(out)],
        cwd=SERVER_DIR,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(result.stdout)


def test_recorded_traffic_replays_with_the_same_answers_every_time(tmp_path: Path, monkeypatch) -> None:
    recording = tmp_path / "traffic-%p.jsonl"
    monkeypatch.setenv("PLANBRIDGE_FHIR_RECORD", str(recording))
    with LocalFhirServer(profile="medplum") as server, requests.Session() as http:
        http.headers.update(FHIR_JSON)
        first = http.post(server.base_url, json=transaction("a"))
        again = http.post(server.base_url, json=transaction("a"))  # the Patient exists: 200, the Goal updated
        bad = http.post(f"{server.base_url}/Goal", json={"resourceType": "Goal", "lifecycleStatus": "banana"})
        pid = server.process.pid if server.process else 0
    assert (first.status_code, again.status_code, bad.status_code) == (200, 200, 400)

    [path] = tmp_path.glob("traffic-*.jsonl")
    assert path.name == f"traffic-{pid}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["argv"][:2] == ["--profile", "medplum"]
    assert [(line["method"], line["status"]) for line in lines[1:]] == [("POST", 200), ("POST", 200), ("POST", 400)]
    assert lines[1]["resBody"] == first.text and lines[3]["resBody"] == bad.text

    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    stats = replay(path, one)
    replay(path, two)
    assert one.read_bytes() == two.read_bytes()
    assert stats["requests"] == 3 and stats["transactions"] == 2
    assert stats["statusDiffsFromRecording"] == 0
    answers = [json.loads(line) for line in one.read_text().splitlines()]
    assert [a["status"] for a in answers] == [200, 200, 400]
    second = json.loads(answers[1]["body"])["entry"]
    assert [e["response"]["status"] for e in second] == ["200 OK", "200 OK"]
    assert second[1]["response"]["lastModified"] == "2026-01-01T00:00:01.000Z"  # the replay's clock


def test_the_server_writes_no_recording_unless_asked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PLANBRIDGE_FHIR_RECORD", raising=False)
    monkeypatch.chdir(tmp_path)
    with LocalFhirServer(profile="hapi") as server:
        assert requests.get(f"{server.base_url}/metadata", timeout=10).status_code == 200
    assert list(tmp_path.iterdir()) == []
