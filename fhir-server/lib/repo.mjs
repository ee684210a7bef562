// A MemoryRepository with HAPI's observable habits: numeric ids, versions "1", "2", ..., 409 on a
// stale If-Match (412 like Medplum with `staleVersion: 'medplum'`), 412 when a conditional write matches several resources, 410 for deleted
// resources, validation on every write, all-or-nothing transactions (undo journal) and an
// identifier index that narrows `identifier=` searches.
import { MemoryRepository } from '@medplum/fhir-router';
import {
  OperationOutcomeError, badRequest, createReference, deepClone, formatSearchQuery, isResourceType, matchesSearchRequest,
  parseSearchRequest, stringify,
} from '@medplum/core';
import { ReferenceChecker, conditionalReferences, unresolvedConditionalReference } from './references.mjs';

const outcome = (id, code, diagnostics) => ({
  resourceType: 'OperationOutcome',
  id,
  issue: [{ severity: 'error', code, details: { text: diagnostics }, diagnostics }],
});
const fail = (id, code, diagnostics) => new OperationOutcomeError(outcome(id, code, diagnostics));
const notKnown = (type, id) => fail('not-found', 'not-found', `HAPI-2001: Resource ${type}/${id} is not known`);

// HAPI's message codes for a conditional operation whose search matched several resources.
const MULTIPLE_MATCH_CODES = { CREATE: '0958', UPDATE: '0988', DELETE: '0962', PATCH: '0972' };

/**
 * HAPI's answer when a conditional operation matches several resources: a PreconditionFailedException,
 * so 412 with issue code `processing` (HAPI's ExceptionHandlingInterceptor) and e.g.
 * `HAPI-0988: Failed to UPDATE resource with match URL "Goal?identifier=s|v" because this search matched 2 resources`.
 * Medplum would say 412 `multiple-matches` (or 400 `invalid` inside a bundle).
 */
function multipleMatches(action, matchUrl, count) {
  return fail('precondition-failed', 'processing',
    `HAPI-${MULTIPLE_MATCH_CODES[action]}: Failed to ${action} resource with match URL "${matchUrl}" ` +
    `because this search matched ${count} resources`);
}

/** One write per resource for a committed transaction: its final state (create + update = create). */
function coalesce(writes) {
  const byKey = new Map();
  for (const write of writes) {
    const key = `${write.resource.resourceType}/${write.resource.id}`;
    const first = byKey.get(key);
    byKey.set(key, first?.action === 'create' && write.action === 'update' ? { ...write, action: 'create' } : write);
  }
  return [...byKey.values()];
}

export class HapiLikeRepository extends MemoryRepository {
  /**
   * @param {{ validate?: (resource: object) => void, staleVersion?: 'hapi' | 'medplum',
   *   references?: { scope: 'all' | 'search-params', onDelete?: boolean, externalReferences?: boolean } }} [options]
   * `references`: referential integrity on write (HAPI-1094/1096/0541; `scope` says which references are
   * checked) and, with `onDelete`, on delete (409 HAPI-0550/0515). Without it nothing is checked.
   * `conditionalReferences`: whose way a conditional reference (`Patient?identifier=s|v`) is resolved on
   * every write: HAPI's (`hapi`, the default) or Medplum's (`medplum`); see `resolveConditionalReferences`.
   */
  constructor(options = {}) {
    super();
    this.refs = options.references && new ReferenceChecker({
      scope: options.references.scope,
      externalReferences: Boolean(options.references.externalReferences),
      exists: (type, id) => this.current(type, id) !== undefined,
      deleted: (type, id) => this.deleted.has(`${type}/${id}`),
    });
    this.refsOnDelete = Boolean(options.references?.onDelete);
    this.deferredWrites = null; // Set("Type/id") written by the running transaction, checked when it ends
    this.deferredDeletes = null; // Set("Type/id") it deleted
    this.validateFn = options.validate ?? (() => {});
    this.staleVersion = options.staleVersion ?? 'hapi'; // how a stale If-Match is answered
    this.conditionalStyle = options.conditionalReferences ?? 'hapi';
    this.nextId = 1;
    this.versions = new Map(); // "Type/id" -> last version number (deletes count, like HAPI)
    this.deleted = new Set(); // "Type/id" of deleted resources (read -> 410)
    this.deletions = new Map(); // type -> Map(id -> [{ versionId, lastUpdated, seq }]): each delete, for type history
    this.writeOrder = new WeakMap(); // stored version -> its place among all writes (type history's order)
    this.writes = 0;
    this.identifierIndex = new Map(); // type -> Map(lower-cased identifier.value -> Set(id))
    this.journal = null; // Map("Type/id" -> prior state) while a transaction runs
    this.pendingWrites = null; // writes of the running transaction, reported once it commits
    this.onCommit = null; // (writes: {action, resource}[]) => void, called after each committed unit
  }

  /** Report a write to onCommit: at once, or when the surrounding transaction commits. */
  recordWrite(action, resource) {
    if (!this.onCommit || !resource) return;
    // No copy: a stored version is never changed in place (every write stores a new object, reads hand
    // out clones), so the write can name it as it is.
    const write = { action, resource };
    if (this.pendingWrites) this.pendingWrites.push(write);
    else this.onCommit([write]);
  }

  generateId() {
    return String(this.nextId++);
  }

  current(type, id) {
    return this.resources.get(type)?.get(id);
  }

  // Overrides MemoryRepository's (TS-private) single write path, used by create, update and
  // conditional create alike.
  createResourceSync(resource, options, update = false) {
    const type = resource.resourceType;
    const id = resource.id ?? this.generateId();
    const key = `${type}/${id}`;
    const existing = this.current(type, id);
    if (!update && existing) throw new OperationOutcomeError(badRequest('Assigned ID is already in use'));
    const version = (this.versions.get(key) ?? 0) + 1;
    const { resourceType: _t, id: _id, meta, ...rest } = resource; // HAPI's key order: type, id, meta
    const candidate = this.resolveConditionalReferences({
      resourceType: type,
      id,
      meta: { ...meta, versionId: String(version), lastUpdated: new Date().toISOString() },
      ...rest,
    });
    this.validateFn(candidate);
    if (this.deferredWrites) this.deferredWrites.add(key); // once the transaction's own creates are in place
    else this.refs?.check(candidate);
    this.remember(type, id);
    const result = this.store(candidate, options, update);
    this.versions.set(key, version);
    this.deleted.delete(key);
    this.writeOrder.set(this.current(type, id), ++this.writes);
    this.unindex(existing);
    this.index(this.current(type, id));
    this.recordWrite(existing ? 'update' : 'create', this.current(type, id));
    return result;
  }

  /**
   * Store `candidate` as MemoryRepository's createResourceSync does in seeding mode (our versionId and
   * lastUpdated kept): the stored version is `JSON.parse(stringify(candidate))` (core's `stringify` drops empty
   * values), the caller gets a separate copy of it. Both come from one serialisation: for a version that has its
   * id and meta, `deepClone(stored)` would serialise to that same text. Anything else goes through core's path.
   */
  store(candidate, options, update) {
    const text = stringify(candidate);
    const stored = JSON.parse(text);
    if (typeof stored.id !== 'string' || !stored.meta?.versionId || !stored.meta.lastUpdated) {
      const wasSeeding = this.seeding;
      this.seeding = true; // keep our versionId/lastUpdated instead of random UUIDs
      try {
        return super.createResourceSync(candidate, options, update);
      } finally {
        this.seeding = wasSeeding;
      }
    }
    const { resourceType: type, id } = stored;
    let byId = this.resources.get(type);
    if (!byId) this.resources.set(type, (byId = new Map()));
    if (!update && byId.has(id)) throw new OperationOutcomeError(badRequest('Assigned ID is already in use'));
    byId.set(id, stored);
    let historyById = this.history.get(type);
    if (!historyById) this.history.set(type, (historyById = new Map()));
    let versions = historyById.get(id);
    if (!versions) historyById.set(id, (versions = []));
    versions.push(stored);
    return JSON.parse(text);
  }

  /**
   * The resource to write, every conditional reference in it (`Patient?identifier=s|v`) resolved to the one
   * resource its search matches, as the real servers do on any write, in a transaction or not
   * (https://hl7.org/fhir/R4/http.html#trules): HAPI (`allow_inline_match_url_references`, on by default) sets
   * the reference to `Type/id` and keeps the rest of the Reference; Medplum replaces the Reference with its
   * `createReference` of the match (`reference` and core's `display`). No match, several, or (HAPI) an unknown
   * type: `unresolvedConditionalReference`. Inside a transaction the search sees what earlier entries wrote.
   * A resource with none is returned as it is; one with some, as a copy (the caller's object is left alone).
   */
  resolveConditionalReferences(resource) {
    if (conditionalReferences(resource).length === 0) return resource;
    const copy = deepClone(resource);
    for (const { holder, key, path, reference } of conditionalReferences(copy)) {
      const question = reference.indexOf('?');
      const type = reference.slice(0, question).split('/').filter(Boolean).pop() ?? '';
      if (!isResourceType(type)) {
        throw unresolvedConditionalReference(this.conditionalStyle, { reference, path, unknownType: type });
      }
      const { sortRules: _sort, count: _count, offset: _offset, include: _i, revInclude: _r, ...search } =
        parseSearchRequest(`${type}${reference.slice(question)}`);
      const matches = (this.searchSync({ ...search, count: 2, offset: 0 }).entry ?? []).map((e) => e.resource);
      if (matches.length !== 1) {
        throw unresolvedConditionalReference(this.conditionalStyle, { reference, path, matches: matches.length });
      }
      holder[key] = this.conditionalStyle === 'medplum'
        ? createReference(matches[0])
        : { ...holder[key], reference: `${type}/${matches[0].id}` };
    }
    return copy;
  }

  async updateResource(resource, options) {
    if (!resource.id) throw new OperationOutcomeError(badRequest('Missing id'));
    const { resourceType: type, id } = resource;
    const existing = this.current(type, id);
    if (options?.ifMatch !== undefined) {
      if (!existing) throw notKnown(type, id);
      this.checkVersion(existing, options.ifMatch, 'update');
    }
    if (!existing && !this.versions.has(`${type}/${id}`) && /^\d+$/.test(id)) {
      throw fail('bad-request', 'processing',
        `HAPI-0960: Can not create resource with ID[${id}], no resource with this ID exists and clients ` +
        'may only assign IDs which contain at least one non-numeric character');
    }
    return this.createResource(resource, undefined, true);
  }

  checkVersion(existing, ifMatch, action) {
    if (existing.meta?.versionId !== ifMatch) {
      // Medplum: core's `preconditionFailed` (412, issue code `processing`, "Precondition Failed").
      if (this.staleVersion === 'medplum') throw fail('precondition-failed', 'processing', 'Precondition Failed');
      const ref = `${existing.resourceType}/${existing.id}/_history/${ifMatch}`;
      // HAPI: a ResourceVersionConflictException without its own outcome, so issue code `processing`.
      throw fail('conflict', 'processing', `HAPI-0989: Trying to ${action} ${ref} but this is not the current version`);
    }
  }

  /** Throw HAPI's 412 when the search of a conditional operation matches more than one resource. */
  assertSingleMatch(action, searchRequest, matchUrl) {
    const { count: _count, offset: _offset, sortRules: _sort, include: _i, revInclude: _r, ...search } = searchRequest;
    const found = this.countMatches({ ...search, offset: 0 });
    if (found > 1) {
      const url = matchUrl ?? `${search.resourceType}${decodeURIComponent(formatSearchQuery(search))}`;
      throw multipleMatches(action, url, found);
    }
  }

  // Medplum's conditional operations search with _count=2 and answer 412 `multiple-matches`; HAPI
  // counts the matches and answers 412 `processing` with its message code (see multipleMatches).
  async conditionalCreate(resource, searchRequest, options) {
    this.assertSingleMatch('CREATE', searchRequest);
    return super.conditionalCreate(resource, searchRequest, options);
  }

  async conditionalUpdate(resource, searchRequest, options) {
    this.assertSingleMatch('UPDATE', searchRequest);
    return super.conditionalUpdate(resource, searchRequest, options);
  }

  async conditionalDelete(searchRequest) {
    this.assertSingleMatch('DELETE', searchRequest);
    return super.conditionalDelete(searchRequest);
  }

  async conditionalPatch(searchRequest, patch, options) {
    this.assertSingleMatch('PATCH', searchRequest);
    return super.conditionalPatch(searchRequest, patch, options);
  }

  async readResource(type, id) {
    const resource = this.current(type, id);
    if (resource) return deepClone(resource);
    if (this.deleted.has(`${type}/${id}`)) {
      const v = this.versions.get(`${type}/${id}`);
      throw fail('gone', 'deleted', `HAPI-2244: Resource ${type}/${id}/_history/${v} has been deleted`);
    }
    throw notKnown(type, id);
  }

  async readHistory(type, id) {
    const versions = this.history.get(type)?.get(id);
    if (!versions?.length) throw notKnown(type, id);
    const entry = [...versions]
      .sort((a, b) => Number(b.meta.versionId) - Number(a.meta.versionId))
      .map((r) => ({ resource: deepClone(r) }));
    return { resourceType: 'Bundle', type: 'history', total: entry.length, entry };
  }

  /**
   * Every version of every resource of a type, deletes included, newest first (HAPI's type-level `_history`):
   * `{ resource }` for a version written, `{ deleted: { id, versionId, lastUpdated } }` for a delete.
   */
  readTypeHistory(type) {
    const entries = [];
    for (const versions of this.history.get(type)?.values() ?? []) {
      for (const resource of versions) {
        entries.push({ resource, lastUpdated: resource.meta.lastUpdated, seq: this.writeOrder.get(resource) ?? 0 });
      }
    }
    for (const [id, deletes] of this.deletions.get(type) ?? []) {
      for (const { seq, ...d } of deletes) entries.push({ deleted: { type, id, ...d }, lastUpdated: d.lastUpdated, seq });
    }
    entries.sort((a, b) => b.seq - a.seq); // the order the writes were made in, newest first
    return entries.map(({ resource, deleted, lastUpdated }) => (resource
      ? { resource: deepClone(resource), lastUpdated }
      : { deleted, lastUpdated }));
  }

  async readVersion(type, id, versionId) {
    const version = this.history.get(type)?.get(id)?.find((v) => v.meta?.versionId === versionId);
    if (!version) {
      if (!this.history.get(type)?.has(id)) throw notKnown(type, id);
      throw fail('not-found', 'not-found', `HAPI-0979: Version "${versionId}" is not valid for resource ${type}/${id}`);
    }
    return deepClone(version);
  }

  async deleteResource(type, id, options) {
    const key = `${type}/${id}`;
    const existing = this.current(type, id);
    if (!existing) {
      if (this.deleted.has(key)) return; // deleting twice is fine on HAPI
      throw notKnown(type, id);
    }
    if (options?.ifMatch !== undefined) this.checkVersion(existing, options.ifMatch, 'delete');
    if (this.refs && this.refsOnDelete) {
      if (this.deferredDeletes) this.deferredDeletes.add(key);
      else this.assertUnreferenced(type, id);
    }
    this.remember(type, id);
    this.resources.get(type).delete(id);
    this.unindex(existing);
    const version = (this.versions.get(key) ?? 0) + 1;
    this.versions.set(key, version);
    this.deleted.add(key);
    let byId = this.deletions.get(type);
    if (!byId) this.deletions.set(type, (byId = new Map()));
    if (!byId.has(id)) byId.set(id, []);
    byId.get(id).push({ versionId: String(version), lastUpdated: new Date().toISOString(), seq: ++this.writes });
    this.recordWrite('delete', existing);
  }

  /** How many resources a search matches (its `total`). A search on `identifier` alone is counted over the
   * index's candidates with core's own matcher, without the copies of every match a search hands out. */
  countMatches(searchRequest) {
    const only = searchRequest.filters?.length === 1 ? this.identifierCandidates(searchRequest) : undefined;
    if (!only) return this.searchSync(searchRequest).total ?? 0;
    const all = this.resources.get(searchRequest.resourceType);
    let found = 0;
    for (const id of only) {
      const resource = all?.get(id);
      if (resource && matchesSearchRequest(resource, searchRequest)) found++;
    }
    return found;
  }

  // Only `identifier=` needs help: candidates come from the index, core still decides the match.
  searchSync(searchRequest) {
    const candidates = this.identifierCandidates(searchRequest);
    if (!candidates) return super.searchSync(searchRequest);
    const all = this.resources.get(searchRequest.resourceType) ?? new Map();
    const subset = new Map();
    for (const id of candidates) if (all.has(id)) subset.set(id, all.get(id));
    const view = Object.create(this, {
      resources: { value: { get: (t) => (t === searchRequest.resourceType ? subset : this.resources.get(t)) } },
    });
    return super.searchSync.call(view, searchRequest);
  }

  identifierCandidates(searchRequest) {
    const filter = searchRequest.filters?.find((f) => f.code === 'identifier' && f.operator === 'eq');
    if (!filter || typeof filter.value !== 'string' || filter.value.includes('\\')) return undefined;
    const byValue = this.identifierIndex.get(searchRequest.resourceType) ?? new Map();
    const ids = new Set();
    for (const token of filter.value.split(',')) {
      const value = token.includes('|') ? token.slice(token.indexOf('|') + 1) : token;
      if (!value) return undefined; // "system|" matches on system only: let core scan
      for (const id of byValue.get(value.toLowerCase()) ?? []) ids.add(id);
    }
    return [...ids].sort((a, b) => Number(a) - Number(b) || a.localeCompare(b));
  }

  identifierValues(resource) {
    const ids = resource?.identifier;
    const list = Array.isArray(ids) ? ids : ids ? [ids] : [];
    return list.map((i) => i?.value).filter((v) => typeof v === 'string').map((v) => v.toLowerCase());
  }

  index(resource) {
    if (!resource) return;
    let byValue = this.identifierIndex.get(resource.resourceType);
    if (!byValue) this.identifierIndex.set(resource.resourceType, (byValue = new Map()));
    for (const value of this.identifierValues(resource)) {
      if (!byValue.has(value)) byValue.set(value, new Set());
      byValue.get(value).add(resource.id);
    }
  }

  unindex(resource) {
    const byValue = resource && this.identifierIndex.get(resource.resourceType);
    for (const value of byValue ? this.identifierValues(resource) : []) {
      byValue.get(value)?.delete(resource.id);
      if (byValue.get(value)?.size === 0) byValue.delete(value);
    }
  }

  // ---- all-or-nothing: an undo journal of the first prior state of every touched resource ----

  remember(type, id) {
    const key = `${type}/${id}`;
    if (!this.journal || this.journal.has(key)) return;
    this.journal.set(key, {
      type,
      id,
      resource: this.current(type, id),
      historyLength: this.history.get(type)?.get(id)?.length ?? 0,
      version: this.versions.get(key),
      deleted: this.deleted.has(key),
      deletions: this.deletions.get(type)?.get(id)?.length ?? 0,
    });
  }

  /** Throw HAPI's 409 when a current resource still references Type/id. */
  assertUnreferenced(type, id) {
    const all = function* (resources) {
      for (const byId of resources.values()) yield* byId.values();
    };
    const found = this.refs.referrer(type, id, all(this.resources));
    if (found) throw ReferenceChecker.deleteConflict(`${type}/${id}`, found);
  }

  /** The references of what a transaction wrote or deleted, checked against its final state. */
  checkDeferred() {
    for (const key of this.deferredWrites ?? []) {
      const [type, id] = key.split('/');
      const resource = this.current(type, id);
      if (resource) this.refs.check(resource, { inTransaction: true });
    }
    for (const key of this.deferredDeletes ?? []) {
      const [type, id] = key.split('/');
      if (!this.current(type, id)) this.assertUnreferenced(type, id);
    }
  }

  /**
   * Run `callback` all-or-nothing. `deferReferenceChecks` (a `transaction` Bundle): references are checked once
   * every entry has run, so entries may reference each other; any failure rolls the whole Bundle back.
   */
  async withTransaction(callback, { deferReferenceChecks = false } = {}) {
    if (this.journal) return callback(this); // nested: the outermost transaction owns the journal
    this.journal = new Map();
    this.pendingWrites = [];
    const defer = Boolean(this.refs && deferReferenceChecks);
    this.deferredWrites = defer ? new Set() : null;
    this.deferredDeletes = defer ? new Set() : null;
    let result;
    try {
      result = await callback(this);
      if (defer) this.checkDeferred();
    } catch (err) {
      this.pendingWrites = null; // a rolled-back transaction notifies nobody
      this.rollback();
      throw err;
    } finally {
      this.deferredWrites = null;
      this.deferredDeletes = null;
    }
    this.journal = null;
    const writes = this.pendingWrites;
    this.pendingWrites = null;
    if (writes.length) this.onCommit?.(coalesce(writes));
    return result;
  }

  rollback() {
    const entries = [...this.journal.entries()].reverse();
    this.journal = null;
    for (const [key, prior] of entries) {
      const { type, id } = prior;
      this.unindex(this.current(type, id));
      if (prior.resource) {
        this.resources.get(type).set(id, prior.resource);
        this.index(prior.resource);
      } else {
        this.resources.get(type)?.delete(id);
      }
      const history = this.history.get(type);
      if (prior.historyLength === 0) history?.delete(id);
      else if (history?.get(id)) history.get(id).length = prior.historyLength;
      if (prior.version === undefined) this.versions.delete(key);
      else this.versions.set(key, prior.version);
      if (prior.deleted) this.deleted.add(key);
      else this.deleted.delete(key);
      const deletes = this.deletions.get(type)?.get(id);
      if (deletes) deletes.length = prior.deletions;
    }
  }
}
