"""What one push carries from reading the plan to recording the outcome (service.sync.push).

The snapshot read in one short transaction, the tally of requests an attempt costs, and the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.domain.model import Plan
from service.sync.provenance import Carried, Linked


@dataclass(frozen=True)
class PushResult:
    """What a push did: the state it left the plan in and how many HTTP requests it cost."""

    plan_id: str
    status: str
    requests: int
    resources: int = 0


@dataclass
class _Snapshot:
    plan: Plan  # the plan as it stands
    sent: Plan  # what goes to the server: the plan with each open conflict's path at the server's value
    bundle: dict[str, Any]
    digest: str
    requests: int
    patient_ref: str | None
    held: bool = False  # some open conflict's path went out at the server's value
    carried: Carried = field(default_factory=Carried)  # the team changes it carries (its Provenance's agents)
    provenance: dict[str, Any] | None = None  # the Provenance entry sent with the Bundle's entries
    sent_document: dict[str, Any] = field(default_factory=dict)  # `sent` as the store keeps it (no bookkeeping)
    links: Linked = field(default_factory=dict)  # the plan's links when it was read, then as its transactions land


LinkRow = tuple[str, str, str, str | None]  # local key, type, id, version
RECONCILE = "reconcile"  # an earlier push's outcome was never recorded: read the server first


@dataclass
class _Tally:
    requests: int = 0  # HTTP requests one attempt to send cost (the CapabilityStatement read included)
    transactions: int = 0
