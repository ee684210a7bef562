// Type-level search (and type-level history) with HAPI-style paging: the first page comes straight from the
// search, later pages from a snapshot of the matching ids (of the history's entries), reached through
// `[base]?_getpages=<uuid>&_getpagesoffset=N&_count=M&_bundletype=searchset` links.
import { randomUUID } from 'node:crypto';
import { OperationOutcomeError, badRequest, getSearchParameters, parseSearchRequest } from '@medplum/core';
import { getExtraEntries } from '@medplum/fhir-router';

// Parameters this front end consumes itself; everything else goes to core's search parser.
const PAGING_PARAMS = new Set(['_count', '_offset', '_getpages', '_getpagesoffset', '_bundletype',
  '_format', '_pretty', '_total', '_summary']);
export const MAX_PAGE_SIZE = 1000;

function gone(details) {
  return new OperationOutcomeError({
    resourceType: 'OperationOutcome',
    id: 'gone',
    issue: [{ severity: 'error', code: 'not-found', details: { text: details }, diagnostics: details }],
  });
}

/** Parse a non-negative `_count`, defaulting to `fallback` and capping at MAX_PAGE_SIZE. */
export function pageSize(query, fallback) {
  const raw = [query._count].flat().at(-1);
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw)) throw new OperationOutcomeError(badRequest(`Invalid _count value: ${raw}`));
  return Math.min(Number(raw), MAX_PAGE_SIZE);
}

const RESULT_PARAMS = new Set(['_sort', '_include', '_revinclude', '_elements', '_contained', '_containedType',
  '_type', '_text', '_content', '_list', '_query', '_filter']);

/** HAPI rejects unknown search parameters (HAPI-0524) instead of silently matching nothing. */
export function checkParameterNames(resourceType, names) {
  const known = getSearchParameters(resourceType) ?? {};
  for (const name of names) {
    const code = name.split(/[:.]/)[0];
    if (code in known || RESULT_PARAMS.has(code) || code === '_has') continue;
    const valid = Object.keys(known).filter((k) => k !== '_project' && k !== '_compartment').sort();
    throw new OperationOutcomeError(badRequest(
      `HAPI-0524: Unknown search parameter "${name}" for resource type "${resourceType}". ` +
      `Valid search parameters for this search are: [${valid.join(', ')}]`));
  }
}

/**
 * One entry of a history Bundle as HAPI writes it (its R4BundleFactory): `fullUrl` without the version,
 * `request` the write that made the version (`POST` for version 1, `PUT` after, `DELETE` for a delete, whose
 * entry has no resource) with the versioned `Type/id/_history/n`, `response` `201 Created` or `200 OK` and the
 * ETag.
 */
function historyEntry({ resource, deleted }, base) {
  const type = resource?.resourceType ?? deleted.type;
  const id = resource?.id ?? deleted.id;
  const version = resource?.meta?.versionId ?? deleted.versionId;
  const method = deleted ? 'DELETE' : version === '1' ? 'POST' : 'PUT';
  return {
    fullUrl: `${base}/${type}/${id}`,
    ...(resource ? { resource } : undefined),
    request: { method, url: `${type}/${id}/_history/${version}` },
    response: { status: version === '1' ? '201 Created' : '200 OK', etag: `W/"${version}"` },
  };
}

/** A page of a searchset or history Bundle, with HAPI's `_getpages` next and previous links into its snapshot. */
function pageBundle(type, entry, total, { selfUrl, base, snapshotId, offset, count }) {
  const link = [{ relation: 'self', url: selfUrl }];
  const pageUrl = (o) => `${base}?_getpages=${snapshotId}&_getpagesoffset=${o}&_count=${count}&_bundletype=${type}`;
  if (snapshotId && offset + count < total) link.push({ relation: 'next', url: pageUrl(offset + count) });
  if (snapshotId && offset > 0) link.push({ relation: 'previous', url: pageUrl(Math.max(0, offset - count)) });
  return {
    resourceType: 'Bundle',
    id: randomUUID(),
    meta: { lastUpdated: new Date().toISOString() },
    type,
    total,
    link,
    ...(entry.length ? { entry } : undefined),
  };
}

export class SearchPager {
  /** @param {import('./repo.mjs').HapiLikeRepository} repo */
  constructor(repo, { defaultPageSize = 20, maxSnapshots = 500, ttlMs = 60 * 60 * 1000 } = {}) {
    this.repo = repo;
    this.defaultPageSize = defaultPageSize;
    this.maxSnapshots = maxSnapshots;
    this.ttlMs = ttlMs;
    this.snapshots = new Map(); // uuid -> { resourceType, ids, include, revInclude, expires }
  }

  /** Run `GET [base]/[type]?query` and return the first page as a searchset Bundle. */
  async search(resourceType, query, base, selfUrl) {
    const count = pageSize(query, this.defaultPageSize);
    const summaryCount = [query._summary].flat().includes('count');
    const params = Object.fromEntries(Object.entries(query).filter(([k]) => !PAGING_PARAMS.has(k)));
    checkParameterNames(resourceType, Object.keys(params));
    const request = parseSearchRequest(resourceType, params);
    const all = await this.repo.search({
      ...request, include: undefined, revInclude: undefined, count: undefined, offset: undefined,
    });
    const matches = (all.entry ?? []).map((e) => e.resource);
    const total = all.total ?? matches.length;
    const size = summaryCount ? 0 : count;
    let snapshotId;
    if (size > 0 && matches.length > size) {
      snapshotId = this.store(resourceType, matches.map((r) => r.id), request);
    }
    return this.bundle({ resourceType, ...request }, matches.slice(0, size), total, base, selfUrl, snapshotId, 0, size);
  }

  /**
   * Run `GET [base]/[type]/_history` as HAPI does: a `history` Bundle of every version of every resource of the
   * type, newest first, deletes included (an entry with no resource, `request` `DELETE Type/id/_history/n`);
   * `_since` keeps the versions written at or after that instant; `_count` pages (later pages from a snapshot,
   * `_getpages` links with `_bundletype=history`). Every entry names its version in `request.url`, as HAPI's do.
   */
  async history(resourceType, query, base, selfUrl) {
    const count = pageSize(query, this.defaultPageSize);
    const sinceRaw = [query._since].flat().at(-1);
    const since = sinceRaw === undefined ? undefined : Date.parse(sinceRaw);
    if (Number.isNaN(since)) throw new OperationOutcomeError(badRequest(`Invalid _since value: ${sinceRaw}`));
    const entries = this.repo.readTypeHistory(resourceType)
      .filter((e) => since === undefined || Date.parse(e.lastUpdated) >= since)
      .map((e) => historyEntry(e, base));
    const snapshotId = entries.length > count ? this.store(resourceType, [], {}, entries) : undefined;
    return this.historyBundle(entries.slice(0, count), entries.length, selfUrl, base, snapshotId, 0, count);
  }

  historyBundle(entry, total, selfUrl, base, snapshotId, offset, count) {
    return pageBundle('history', entry, total, { selfUrl, base, snapshotId, offset, count });
  }


  /** Serve `[base]?_getpages=...` from a stored snapshot. */
  async page(query, base, selfUrl) {
    const id = [query._getpages].flat().at(-1);
    this.expire();
    const snap = this.snapshots.get(id);
    if (!snap) throw gone(`HAPI-0417: Search ID "${id}" does not exist and may have expired`);
    const offset = Number([query._getpagesoffset].flat().at(-1) ?? 0);
    if (!Number.isInteger(offset) || offset < 0) throw new OperationOutcomeError(badRequest('Invalid _getpagesoffset'));
    const count = pageSize(query, this.defaultPageSize);
    if (snap.history) {
      const entries = snap.history.slice(offset, offset + count);
      return this.historyBundle(entries, snap.history.length, selfUrl, base, id, offset, count);
    }
    const resources = [];
    for (const rid of snap.ids.slice(offset, offset + count)) {
      try {
        resources.push(await this.repo.readResource(snap.resourceType, rid));
      } catch {
        // deleted since the search ran: skip it, as HAPI's snapshot pages do
      }
    }
    return this.bundle(snap, resources, snap.ids.length, base, selfUrl, id, offset, count);
  }

  store(resourceType, ids, request, history = undefined) {
    this.expire();
    while (this.snapshots.size >= this.maxSnapshots) this.snapshots.delete(this.snapshots.keys().next().value);
    const id = randomUUID();
    this.snapshots.set(id, {
      resourceType, ids, include: request.include, revInclude: request.revInclude, history,
      expires: Date.now() + this.ttlMs,
    });
    return id;
  }

  expire() {
    const now = Date.now();
    for (const [id, snap] of this.snapshots) if (snap.expires < now) this.snapshots.delete(id);
  }

  async bundle(request, resources, total, base, selfUrl, snapshotId, offset, count) {
    const fullUrl = (type, id) => `${base}/${type}/${id}`;
    const entry = resources.map((resource) => ({
      fullUrl: fullUrl(resource.resourceType, resource.id),
      resource,
      search: { mode: 'match' },
    }));
    if ((request.include || request.revInclude) && resources.length) {
      const searchRequest = { resourceType: request.resourceType, include: request.include, revInclude: request.revInclude };
      await getExtraEntries(this.repo, searchRequest, resources, entry, { fullUrl });
    }
    return pageBundle('searchset', entry, total, { selfUrl, base, snapshotId, offset, count });
  }
}
