// Referential integrity on write, as HAPI FHIR enforces it by default (`enforce_referential_integrity_on_write`),
// and on delete where asked (`enforce_referential_integrity_on_delete`). What HAPI says:
//   HAPI-1094: Resource Patient/123 not found, specified in path: Goal.subject              (400)
//   HAPI-1096: Resource Patient/123 is deleted, specified in path: Goal.subject             (400)
//   HAPI-0541: Unable to satisfy placeholder ID urn:uuid:... found in element named 'subject'
//              within resource of type: Goal                                                (400, transactions)
//   HAPI-0550: HAPI-0515: Unable to delete Patient/1 because at least one resource has a reference to this
//              resource. First reference found was resource Goal/2 in path Goal.subject     (409)
//   HAPI-0507: Resource contains external reference to URL "https://other.example/fhir/Patient/1" but this
//              server is not configured to allow external references                      (400)
// Absolute references: HAPI's parser first makes those on the server's own base relative (`relativeToBase`,
// `IParser.setServerBaseUrl`), so they are checked as any `Type/id`; one on another server is refused with
// HAPI-0507 (its `allow_external_references` is off by default) and, with `externalReferences`, stored as it
// is and never checked. Medplum's `checkReferencesOnWrite` reads a reference as `Type/id` only
// (`readReference`), so the `medplum` scope refuses every absolute one, on its own base too, as Medplum does:
// 400, issue `structure`, `Invalid reference (Invalid reference)` at the element's path.
// Not checked, as on HAPI: `#contained`, logical (identifier-only) and display-only references.
import { OperationOutcomeError, globalSchema, isResourceType } from '@medplum/core';

const error = (id, diagnostics) => new OperationOutcomeError({
  resourceType: 'OperationOutcome',
  id,
  issue: [{ severity: 'error', code: 'processing', details: { text: diagnostics }, diagnostics }],
});

const LITERAL = /^([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?$/;
const PLACEHOLDER = /^urn:(uuid|oid):/;
// `[base/]Type/id[/_history/vid]` with an http(s) base (R4's literal reference, absolute)
const ABSOLUTE = /^https?:\/\/[^?#]*?\/([A-Z][A-Za-z]+)\/([^/?#]+)(?:\/_history\/[^/?#]+)?$/i;

const invalidForMedplum = (path) => new OperationOutcomeError({
  resourceType: 'OperationOutcome',
  id: 'invalid-reference',
  issue: [{
    severity: 'error', code: 'structure', details: { text: 'Invalid reference (Invalid reference)' }, expression: [path],
  }],
});

/**
 * HAPI's parser with its server base set (`IParser.setServerBaseUrl`): every reference `${base}/Type/id...`
 * in `value` (a resource, a Bundle and its entries) made relative, in place. Other references are left as
 * they are. Returns `value`.
 */
export function relativeToBase(value, base) {
  const prefix = `${base.replace(/\/+$/, '')}/`;
  const walk = (node) => {
    if (Array.isArray(node)) {
      for (const item of node) walk(item);
      return;
    }
    if (node === null || typeof node !== 'object') return;
    for (const key of Object.keys(node)) {
      const child = node[key];
      if (key === 'reference' && typeof child === 'string' && child.startsWith(prefix)) {
        const rest = child.slice(prefix.length);
        if (LITERAL.test(rest)) node.reference = rest;
      } else if (child !== null && typeof child === 'object') {
        walk(child);
      }
    }
  };
  walk(value);
  return value;
}

/**
 * Every Reference in a resource: `{ path, name, reference }`, where `path` is the element path without
 * indices (`CarePlan.activity.detail.goal`) and `name` the element's own name (`goal`); one found inside a
 * `contained` resource also has `contained: true`.
 * With `contained: false`, references inside `contained` resources are left out. Resources nested otherwise
 * (a stored Bundle's entries, Parameters) are always left out.
 */
export function collectReferences(resource, { contained = true } = {}) {
  const found = [];
  const isResource = (c) => typeof c?.resourceType === 'string';
  const walk = (value, path, name, inContained) => {
    if (Array.isArray(value)) {
      for (const item of value) walk(item, path, name, inContained);
      return;
    }
    if (value === null || typeof value !== 'object') return;
    if (typeof value.reference === 'string' && path.includes('.')) {
      const { reference } = value;
      found.push(inContained ? { path, name, reference, contained: true } : { path, name, reference });
    }
    for (const key of Object.keys(value)) {
      const child = value[key];
      if (key === 'reference' || (child === null || typeof child !== 'object')) continue;
      if (key === 'contained' && path === resource.resourceType) {
        if (contained) for (const r of [child].flat()) if (r?.resourceType) walk(r, r.resourceType, r.resourceType, true);
        continue;
      }
      // A resource inside another (`Bundle.entry.resource`, `Parameters.parameter.resource`) is not written
      // as itself: its references resolve within its container (a Bundle's fullUrls), and HAPI does not index them.
      if (Array.isArray(child) ? child.some(isResource) : isResource(child)) continue;
      walk(child, `${path}.${key}`, key, inContained);
    }
  };
  walk(resource, resource.resourceType, resource.resourceType, false);
  return found;
}

// ---- conditional references (`Patient?identifier=s|v`): resolved on write, as HAPI and Medplum do ----

/**
 * Every conditional reference in a resource, contained resources included: a Reference whose `reference` has a
 * `?` (`Type?params`, `Type/?params`, `[base/]Type?params`; https://hl7.org/fhir/R4/http.html#trules).
 * Each is `{ holder, key, path, reference }`: `holder[key]` is the Reference, `path` its element path as
 * Medplum's crawler names it (`Goal.subject`, `CareTeam.participant.member`, `CarePlan.goal[0]`: an index
 * only for an element that is itself a list of References).
 */
export function conditionalReferences(resource) {
  const found = [];
  const conditional = (value) => typeof value?.reference === 'string' && value.reference.includes('?');
  const walk = (node, path) => {
    for (const key of Object.keys(node)) {
      const child = node[key];
      if (child === null || typeof child !== 'object' || (key === 'meta' && typeof node.resourceType === 'string')) continue;
      const childPath = `${path}.${key}`;
      if (!Array.isArray(child)) {
        if (conditional(child)) found.push({ holder: node, key, path: childPath, reference: child.reference });
        walk(child, childPath);
        continue;
      }
      for (let i = 0; i < child.length; i++) {
        const item = child[i];
        if (item === null || typeof item !== 'object') continue;
        if (conditional(item)) found.push({ holder: child, key: i, path: `${childPath}[${i}]`, reference: item.reference });
        walk(item, childPath);
      }
    }
  };
  walk(resource, resource.resourceType);
  return found;
}

/**
 * Why a conditional reference could not be resolved (`matches`: 0 or 2, or `unknownType`), as each server says.
 * HAPI (`BaseSearchParamWithInlineReferencesExtractor`; messages from hapi-messages.properties, its tests):
 *   404 `HAPI-1091: Invalid match URL "Patient?identifier=s|v" - No resources match this search`
 *   412 `HAPI-1092: Invalid match URL "Patient?identifier=s|v" - Multiple resources match this search`
 *   400 `HAPI-1090: Invalid match URL "Foo?x=1" - Unknown resource type: "Foo"`
 * Medplum (`replaceConditionalReferences`, packages/server/src/fhir/references.ts): 400 `invalid`,
 *   `Conditional reference 'Patient?identifier=s|v' did not match any resources` (or `matched multiple
 *   resources`), with the element's path as `expression`.
 */
export function unresolvedConditionalReference(style, { reference, path, matches, unknownType }) {
  if (style === 'medplum') {
    const text = `Conditional reference '${reference}' ${matches ? 'matched multiple' : 'did not match any'} resources`;
    return new OperationOutcomeError({
      resourceType: 'OperationOutcome',
      id: 'bad-request',
      issue: [{ severity: 'error', code: 'invalid', details: { text }, expression: [path] }],
    });
  }
  if (unknownType) {
    return error('bad-request', `HAPI-1090: Invalid match URL "${reference}" - Unknown resource type: "${unknownType}"`);
  }
  if (matches) return error('precondition-failed', `HAPI-1092: Invalid match URL "${reference}" - Multiple resources match this search`);
  return error('not-found', `HAPI-1091: Invalid match URL "${reference}" - No resources match this search`);
}

// ---- the paths HAPI checks: those of its reference search parameters (its ResourceLinks) ----

const searchParamPaths = new Map(); // type -> Set of element paths

/** The element paths of a type's reference search parameters (`Goal.subject`, `CarePlan.goal`, ...). */
export function referencePaths(type) {
  let paths = searchParamPaths.get(type);
  if (paths) return paths;
  paths = new Set();
  for (const param of Object.values(globalSchema.types[type]?.searchParams ?? {})) {
    if (param?.type !== 'reference' || !param.expression) continue;
    for (const part of param.expression.split('|')) {
      const text = part.trim();
      const match = /^\(?\s*([A-Za-z]+(?:\.[A-Za-z]+)*)/.exec(text);
      if (!match || !match[1].startsWith(`${type}.`)) continue;
      let path = match[1];
      // `Goal.subject.where(resolve() is Patient)`: the last name is a function, not an element
      if (text[match.index + match[0].length] === '(') path = path.slice(0, path.lastIndexOf('.'));
      if (path.startsWith(`${type}.meta.`)) continue; // Medplum's own `_compartment`, not HAPI's
      if (/\bas\s+Reference\b|ofType\(Reference\)/.test(part)) path += 'Reference'; // value[x] as Reference
      paths.add(path);
    }
  }
  searchParamPaths.set(type, paths);
  return paths;
}

/**
 * Checks the references of resources being written against what the repository holds.
 * `scope`: `all` (every literal reference, as Medplum's `checkReferencesOnWrite` does) or `search-params`
 * (only the paths of reference search parameters, as HAPI's JPA server does).
 */
export class ReferenceChecker {
  /**
   * @param {{ scope: 'all' | 'search-params', exists: (type, id) => boolean, deleted: (type, id) => boolean,
   *   externalReferences?: boolean }} options
   * `externalReferences`: accept absolute references to other servers (HAPI's `allow_external_references`),
   * stored as they are; off by default, as on HAPI.
   */
  constructor({ scope, exists, deleted, externalReferences = false }) {
    this.scope = scope;
    this.exists = exists;
    this.deleted = deleted;
    this.externalReferences = externalReferences;
  }

  /** The references of a resource that this server checks on write. */
  checked(resource, all = undefined) {
    if (this.scope === 'all') return all ?? collectReferences(resource);
    const paths = referencePaths(resource.resourceType);
    // `all` (every reference, contained ones included) less those in contained resources is the same list, in
    // the same order, as a walk that leaves contained resources out
    return (all ?? collectReferences(resource, { contained: false })).filter((r) => !r.contained && paths.has(r.path));
  }

  /**
   * Throw HAPI's 400 for the first reference of `resource` that does not resolve. `inTransaction`: also refuse
   * `urn:uuid:`/`urn:oid:` placeholders (any still present once the transaction has rewritten the ones its
   * entries' fullUrls resolve).
   */
  check(resource, { inTransaction = false } = {}) {
    const self = `${resource.resourceType}/${resource.id}`;
    let checked;
    if (inTransaction) {
      // HAPI looks at every reference for placeholders, whatever its path.
      const all = collectReferences(resource);
      for (const { name, reference } of all) {
        if (PLACEHOLDER.test(reference)) {
          throw error('bad-request', `HAPI-0541: Unable to satisfy placeholder ID ${reference} found in element ` +
            `named '${name}' within resource of type: ${resource.resourceType}`);
        }
      }
      checked = this.checked(resource, all); // from the same walk
    }
    for (const { path, reference } of checked ?? this.checked(resource)) {
      if (!this.externalReferences && /^https?:\/\//i.test(reference)) {
        // Medplum reads no absolute reference; HAPI refuses one naming a resource (on the `hapi` profile one on
        // the server's own base was made relative when the request was read, by `relativeToBase`)
        if (this.scope === 'all') throw invalidForMedplum(path);
        const absolute = ABSOLUTE.exec(reference);
        if (absolute && isResourceType(absolute[1])) {
          throw error('bad-request', `HAPI-0507: Resource contains external reference to URL "${reference}" ` +
            'but this server is not configured to allow external references');
        }
      }
      const match = LITERAL.exec(reference);
      if (!match || !isResourceType(match[1])) continue;
      const [, type, id] = match;
      if (`${type}/${id}` === self || this.exists(type, id)) continue;
      if (this.deleted(type, id)) {
        throw error('bad-request', `HAPI-1096: Resource ${type}/${id} is deleted, specified in path: ${path}`);
      }
      throw error('bad-request', `HAPI-1094: Resource ${type}/${id} not found, specified in path: ${path}`);
    }
  }

  /** The first `{ source, path }` among `resources` that references `Type/id` (a delete's conflict), if any. */
  referrer(type, id, resources) {
    const target = `${type}/${id}`;
    for (const resource of resources) {
      const source = `${resource.resourceType}/${resource.id}`;
      if (source === target) continue;
      for (const { path, reference } of this.checked(resource)) {
        const match = LITERAL.exec(reference);
        if (match && `${match[1]}/${match[2]}` === target) return { source, path };
      }
    }
    return undefined;
  }

  /** HAPI's 409 for deleting a resource that is still referenced. */
  static deleteConflict(target, { source, path }) {
    return error('conflict', `HAPI-0550: HAPI-0515: Unable to delete ${target} because at least one resource has a ` +
      `reference to this resource. First reference found was resource ${source} in path ${path}`);
  }
}
