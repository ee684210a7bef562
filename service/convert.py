"""Plan JSON <-> FHIR R4 transaction Bundle, and validation to an OperationOutcome, for the CLI.

Every problem is an `Issue` with the path of the element it is about: a plan path as `check_plan`
names it (`goals[0].lifecycle_status`) or a FHIR element path (`Goal.lifecycleStatus`,
`Bundle.entry[2].resource.target[0]`). Bad input raises `ConversionRefused` carrying them all.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mappings.bundle import bundle_to_plan, plan_to_bundle
from mappings.bundle_base import absolute_references
from mappings.fhir import issues_of, structure_errors
from mappings.validate import check_resource, unresolved_placeholders
from service.domain.codec import from_dict, to_dict
from service.domain.errors import PlanbridgeError
from service.domain.model import Plan
from service.domain.rules import Issue, check_plan, errors
from service.planschema import shape_issues
from service.settings import Settings

# Our issue codes -> FHIR IssueType codes (https://hl7.org/fhir/R4/valueset-issue-type.html).
ISSUE_TYPES = {
    "structure": "structure",
    "required": "required",
    "code-invalid": "code-invalid",
    "duplicate": "duplicate",
    "business-rule": "business-rule",
    "invariant": "invariant",
    "invalid": "invalid",
    "exception": "exception",
}


class ConversionRefused(PlanbridgeError):
    """Input that cannot be converted; `issues` names each problem by its element path."""

    code = "conversion-refused"

    def __init__(self, detail: str, issues: list[Issue]) -> None:
        super().__init__(detail, issues=issues)
        self.issues = issues


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """Return the JSON value in `raw`; refuse what is not JSON (NaN and Infinity included)."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        problem = f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except (ValueError, RecursionError) as exc:
        problem = f"not JSON: {exc}"
    raise ConversionRefused("the input is not JSON", [Issue("", problem, code="structure")])


def _error(path: str, message: str, code: str = "invalid") -> Issue:
    return Issue(path, message, code=code)


def _mapping_issues(exc: PlanbridgeError) -> list[Issue]:
    found = exc.data.get("errors") or {}
    if not isinstance(found, dict) or not found:
        return [_error("", exc.detail)]
    return [_error(str(path), f"{exc.detail}: {message}") for path, message in found.items()]


def _fhir_path(path: str) -> str:
    """Return a fhir.resources error location ("Goal.target.0.dueDate") as a FHIR path ("Goal.target[0].dueDate")."""
    path = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", path)
    return path.removesuffix(".root")


def resource_issues(resource: Any, prefix: str | None = None) -> list[Issue]:
    """Return the problems of one FHIR resource; with `prefix`, paths start there instead of at its type."""
    if not isinstance(resource, dict):
        return [_error(prefix or "", "a FHIR resource is a JSON object", "structure")]
    rtype = str(resource.get("resourceType", ""))
    out = []
    for issue in issues_of(resource):
        path = _fhir_path(issue.path)
        if prefix is not None:
            rest = path[len(rtype) :] if rtype and path.startswith(rtype) else f".{path}" if path else ""
            path = prefix + rest
        out.append(Issue(path, issue.message, issue.severity, issue.code))
    return out


def _without_resource(entry: Any) -> Any:
    return {k: v for k, v in entry.items() if k != "resource"} if isinstance(entry, dict) else entry


def bundle_issues(bundle: dict[str, Any]) -> list[Issue]:
    """Return the problems of a Bundle: its own structure, then each entry's resource."""
    entries = bundle.get("entry")
    shell = dict(bundle)
    if isinstance(entries, list):
        shell["entry"] = [_without_resource(e) for e in entries]
    # The shell's structure, then the Bundle's bindings and invariants on the whole Bundle (bdl-3, bdl-5 look at
    # the entries' resources). An entry that holds only its resource is empty in the shell: not a problem.
    only_resource = {
        f"Bundle.entry[{i}]"
        for i, e in enumerate(entries if isinstance(entries, list) else [])
        if isinstance(e, dict) and set(e) == {"resource"}
    }
    shape = {_fhir_path(p): m for p, m in structure_errors(shell).items()}
    out = [Issue(p, m, code="structure") for p, m in shape.items() if p not in only_resource]
    if not out:
        out = check_resource(bundle)
        if bundle.get("type") == "transaction":  # a server refuses it (HAPI-0541): the input is broken as it is
            out += [Issue(p, m, code="invalid") for p, m in unresolved_placeholders(bundle).items()]
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and "resource" in entry:
            out += resource_issues(entry["resource"], f"Bundle.entry[{i}].resource")
    return out


def load_plan(document: Any) -> tuple[Plan, list[Issue]]:
    """Return the plan in a plan JSON document and its warnings; refuse a malformed or rule-breaking plan."""
    if isinstance(document, dict) and "resourceType" in document:
        raise ConversionRefused(
            "the input is FHIR, not a plan",
            [_error("resourceType", f"a plan has no resourceType; this is a FHIR {document['resourceType']}")],
        )
    problems = shape_issues(document)
    if problems:
        raise ConversionRefused("the input is not a valid plan", problems)
    plan = from_dict(Plan, document)
    issues = check_plan(plan)
    if errors(issues):
        raise ConversionRefused("the plan breaks its rules", issues)
    return plan, issues


def to_fhir(document: Any, settings: Settings) -> tuple[dict[str, Any], list[Issue]]:
    """Return the transaction Bundle for a plan JSON document, and the plan's warnings."""
    plan, warnings = load_plan(document)
    try:
        bundle = plan_to_bundle(plan, settings.identifier_base, settings.mrn_system)
    except PlanbridgeError as exc:
        raise ConversionRefused("the plan cannot be mapped to FHIR", _mapping_issues(exc)) from None
    problems = [
        Issue(issue.path, f"in the Bundle the plan maps to: {issue.message}", code=issue.code)
        for issue in errors(check_resource(bundle))
    ]
    for i, entry in enumerate(bundle["entry"]):
        rtype = entry["resource"]["resourceType"]
        for issue in errors(resource_issues(entry["resource"], f"Bundle.entry[{i}].resource")):
            problems.append(Issue(issue.path, f"in the {rtype} the plan maps to: {issue.message}", code=issue.code))
    for path, message in unresolved_placeholders(bundle).items():
        problems.append(Issue(path, f"in the Bundle the plan maps to: {message}", code="invalid"))
    if problems:
        raise ConversionRefused("the plan maps to FHIR that is not valid R4", problems)
    return bundle, warnings


def _plan_of_bundle(bundle: dict[str, Any], settings: Settings) -> Plan:
    try:
        return bundle_to_plan(bundle, settings.identifier_base, settings.mrn_system)
    except PlanbridgeError as exc:
        raise ConversionRefused("the Bundle cannot be read as a plan", _mapping_issues(exc)) from None


def from_fhir(document: Any, settings: Settings, door: bool = False) -> tuple[dict[str, Any], list[Issue]]:
    """Return the plan JSON for a Bundle around one CarePlan, and the plan's warnings.

    A relative reference in an entry whose fullUrl is on another FHIR server than FHIR_BASE_URL is read as R4
    resolves it in a Bundle: a reference to that server (`mappings.bundle_base.absolute_references`). Offline
    (FHIR_BASE_URL unset) `convert` cannot tell ours from theirs and keeps the references as written; the door
    (`door`, `plans import`) then takes every absolute fullUrl as another server's, as it takes every absolute
    reference (docs/references.md).
    """
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        found = f"a {document['resourceType']}" if isinstance(document, dict) and "resourceType" in document else None
        found = found or ("a plan" if isinstance(document, dict) else "JSON that is not an object")
        issue = _error("resourceType", f"expected a FHIR Bundle around one CarePlan, got {found}")
        raise ConversionRefused("the input is not a FHIR Bundle", [issue])
    problems = errors(bundle_issues(document))
    if problems:
        raise ConversionRefused("the Bundle is not valid FHIR R4", problems)
    if door or settings.fhir_base_url:
        document = absolute_references(document, settings.fhir_base_url)
    plan = _plan_of_bundle(document, settings)
    issues = check_plan(plan)
    if errors(issues):
        raise ConversionRefused("the plan read from the Bundle breaks its rules", issues)
    return to_dict(plan), issues


def _careplan_count(bundle: dict[str, Any]) -> int:
    resources = [e.get("resource") or {} for e in bundle.get("entry", []) if isinstance(e, dict)]
    return sum(1 for r in resources if isinstance(r, dict) and r.get("resourceType") == "CarePlan")


def _door(plan: Plan) -> list[Issue]:
    """What `plans import` refuses beyond convert's checks: the rules team events are held to (plan_door)."""
    from service.services.plan_door import door_issues

    return door_issues(plan)


def validate(document: Any, settings: Settings) -> list[Issue]:
    """Return every problem of a plan JSON document, a FHIR resource or a FHIR Bundle."""
    if not isinstance(document, dict):
        return [_error("", "expected a JSON object: a plan, a FHIR resource or a Bundle", "structure")]
    if "resourceType" not in document:
        try:
            _, warnings = to_fhir(document, settings)
        except ConversionRefused as refused:
            return refused.issues
        return [*_door(from_dict(Plan, document)), *warnings]
    if document["resourceType"] != "Bundle":
        return resource_issues(document)
    issues = bundle_issues(document)
    if not errors(issues) and _careplan_count(document) == 1:
        try:
            plan = _plan_of_bundle(document, settings)
            for i in [*check_plan(plan), *_door(plan)]:
                issues.append(Issue(i.path, f"the plan read from the CarePlan: {i.message}", i.severity, i.code))
        except ConversionRefused as refused:
            issues += refused.issues
    return issues


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """Return the issues as a FHIR R4 OperationOutcome; no issues gives one `information` issue "valid"."""
    if not issues:
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "valid"}],
        }
    out = []
    for issue in issues:
        entry: dict[str, Any] = {
            "severity": issue.severity if issue.severity in ("error", "warning") else "information",
            "code": ISSUE_TYPES.get(issue.code, "invalid"),
            "diagnostics": issue.message,
        }
        if issue.path:
            entry["expression"] = [issue.path]
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}


def describe(issue: Issue) -> str:
    """Return one line for a person: severity, path and message."""
    return f"{issue.severity}: {issue.path}: {issue.message}" if issue.path else f"{issue.severity}: {issue.message}"


def dumps(value: Any) -> str:
    """Return indented JSON, non-ASCII kept as it is."""
    return json.dumps(value, indent=2, ensure_ascii=False)
