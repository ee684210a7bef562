// HTTP front end: turns node:http requests into FhirRouter calls and adds HAPI's observable
// behaviour (base path, headers, paging, status codes, OperationOutcomes, transaction responses).
import { STATUS_CODES } from 'node:http';
import {
  OperationOutcomeError, allOk, badRequest, getStatus, isResourceType, normalizeOperationOutcome, parseSearchRequest,
} from '@medplum/core';
import { BatchProcessor, FhirRouter } from '@medplum/fhir-router';
import { capabilityStatement } from './capability.mjs';
import { SearchPager } from './paging.mjs';
import { relativeToBase } from './references.mjs';
import { HapiLikeRepository } from './repo.mjs';
import { validate } from './schema.mjs';
import { SubscriptionNotifier, validateSubscription } from './subscriptions.mjs';

export const BASE_PATH = '/baseR4';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const JSON_TYPES = new Set(['', 'application/fhir+json', 'application/json', 'application/json-patch+json']);
const FORM_TYPE = 'application/x-www-form-urlencoded';
const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH']);

const BUNDLE_ACTIONS = { PUT: 'UPDATE', DELETE: 'DELETE', PATCH: 'PATCH' }; // HAPI's verbs in its messages

/**
 * The server's profiles: which real server's limits it copies. Everything else is HAPI-like in both.
 * - `medplum` (the default): Medplum 5.2.13's transaction caps, as its BatchProcessor enforces them:
 *   400 `Transaction contains more update operations than allowed` for more than 50 updates (PUTs),
 *   400 `Transaction requires strict isolation but has too many entries` for more than 8 entries
 *   when any entry needs strict isolation (a POST with ifNoneExist, a PUT or DELETE whose URL has a
 *   `?`); and a stale If-Match answers 412 `Precondition Failed`, as Medplum does.
 * - `hapi`: no caps (HAPI has none), and a stale If-Match answers 409 HAPI-0989.
 */
export const PROFILES = ['medplum', 'hapi'];
export const MEDPLUM_LIMITS = { maxStrictEntries: 8, maxUpdates: 50 }; // fhir-router's own constants

/** Medplum's BatchProcessor, with HAPI's answer for a conditional entry that matches several resources. */
class HapiLikeBatchProcessor extends BatchProcessor {
  // Medplum resolves `PUT/DELETE/PATCH Type?query` entries up front and answers 400 `invalid`
  // ("Conditional PUT matched multiple resources"); HAPI answers 412 HAPI-0988/0962/0972.
  async resolveModificationIdentity(entry, index) {
    const { method, url } = entry.request ?? {};
    if (url?.includes('?') && BUNDLE_ACTIONS[method]) {
      this.repo.assertSingleMatch(BUNDLE_ACTIONS[method], parseSearchRequest(url), url);
    }
    return super.resolveModificationIdentity(entry, index);
  }

  // ---- the same work as Medplum's, done once or with fewer copies (nothing a client can see changes) ----

  // Medplum's pre-event measures `JSON.stringify(bundle)` for telemetry; nothing listens on this router.
  dispatchPreEvent() {
    if (this.router.listenerCount('batch') > 0) super.dispatchPreEvent();
  }

  // Medplum looks an entry's route up three times (identity, ordering, processing), parsing its URL each time.
  // The router is fixed, so a method and URL always find the same route; each caller gets its own params and query.
  getRouteForEntry(entry) {
    const method = entry.request?.method;
    const url = entry.request?.url ?? '';
    if (typeof method !== 'string' || typeof url !== 'string') return super.getRouteForEntry(entry);
    this.routeCache ??= new Map();
    const key = `${method} ${url}`;
    let route = this.routeCache.get(key);
    if (!route) {
      route = super.getRouteForEntry(entry);
      if (!route) return route;
      this.routeCache.set(key, route);
    }
    return {
      ...route,
      params: Object.assign(Object.create(null), route.params),
      query: route.query && copyQuery(route.query),
    };
  }

  // Medplum's rewriteIdsInString looks for `urn:uuid:` (or `urn%3Auuid%3A`) with a regular expression; a string
  // without `urn` cannot contain either and is returned as it is, as Medplum would.
  rewriteIdsInString(input) {
    return input.includes('urn') ? super.rewriteIdsInString(input) : input;
  }

  // Medplum's copy of each entry with its `urn:uuid:` references rewritten, without the intermediate arrays of
  // `Object.fromEntries(Object.entries(input).map(...))`: same keys, same order, same values.
  rewriteIdsInObject(input) {
    const out = {};
    for (const key of Object.keys(input)) {
      const value = this.rewriteIds(input[key]);
      if (key === '__proto__') Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
      else out[key] = value;
    }
    return out;
  }
}

function copyQuery(query) {
  const copy = Object.create(null);
  for (const key of Object.keys(query)) copy[key] = Array.isArray(query[key]) ? [...query[key]] : query[key];
  return copy;
}

/**
 * The `hapi` profile: no transaction caps. Medplum's caps are meant for its PostgreSQL backend; this
 * server handles one request at a time, so every transaction is already isolated, and HAPI has none.
 */
class UncappedBatchProcessor extends HapiLikeBatchProcessor {
  async preprocessBundle() {
    const info = await super.preprocessBundle();
    return { ...info, requiresStrongTransaction: false, updates: 0 };
  }
}

const oo = (status, code, diagnostics, severity = 'error') => {
  const err = new OperationOutcomeError({
    resourceType: 'OperationOutcome',
    issue: [{ severity, code, details: { text: diagnostics }, diagnostics }],
  });
  err.httpStatus = status;
  return err;
};

/** Outcome for the wire: no Medplum outcome id, and every issue carries `diagnostics` like HAPI's. */
function wireOutcome(outcome) {
  const { id: _id, ...rest } = outcome;
  rest.issue = (outcome.issue ?? []).map((i) => i.diagnostics ? i : {
    ...i,
    diagnostics: [i.details?.text, i.expression?.length ? `(at ${i.expression.join(', ')})` : '']
      .filter(Boolean).join(' '),
  });
  return rest;
}

function queryRecord(searchParams) {
  const query = Object.create(null);
  for (const [k, v] of searchParams) query[k] = k in query ? [query[k]].flat().concat(v) : v;
  return query;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) reject(oo(413, 'too-costly', `Request body exceeds ${MAX_BODY_BYTES} bytes`));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.on('error', reject);
  });
}

export function createApp({
  pageSize = 20, log = () => {}, subscriptionRetryDelaysMs, profile = 'medplum', referentialIntegrityOnDelete = false,
  allowExternalReferences = false,
} = {}) {
  if (!PROFILES.includes(profile)) throw new Error(`unknown profile ${profile}; use one of ${PROFILES.join(', ')}`);
  const repo = new HapiLikeRepository({
    validate: (r) => { validate(r); validateSubscription(r); },
    staleVersion: profile === 'medplum' ? 'medplum' : 'hapi',
    // A conditional reference (`Patient?identifier=s|v`) is resolved on every write, as each real server does.
    conditionalReferences: profile === 'medplum' ? 'medplum' : 'hapi',
    // Referential integrity on write in both profiles: Medplum's `checkReferencesOnWrite` looks at every
    // reference, HAPI at those on its reference search parameters' paths. On delete only when asked.
    // Absolute references to other servers: refused (HAPI-0507 / Medplum's `Invalid reference`) unless allowed.
    references: {
      scope: profile === 'medplum' ? 'all' : 'search-params',
      onDelete: referentialIntegrityOnDelete,
      externalReferences: allowExternalReferences,
    },
  });
  const Processor = profile === 'medplum' ? HapiLikeBatchProcessor : UncappedBatchProcessor;
  const router = new FhirRouter();
  const pager = new SearchPager(repo, { defaultPageSize: pageSize });
  const startedAt = new Date().toISOString();
  let chain = Promise.resolve();
  const serialized = (fn) => {
    const run = chain.then(fn, fn);
    chain = run.catch(() => {});
    return run;
  };
  const notifier = new SubscriptionNotifier({ repo, serialized, log, retryDelaysMs: subscriptionRetryDelaysMs });

  async function parseRequest(req, url) {
    if (!WRITE_METHODS.has(req.method)) return undefined;
    const text = await readBody(req);
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type === FORM_TYPE && url.pathname.endsWith('/_search')) return queryRecord(new URLSearchParams(text));
    if (!JSON_TYPES.has(type)) throw oo(415, 'not-supported', `HAPI-1895: Unsupported content type "${type}"; use application/fhir+json`);
    let body;
    try {
      body = JSON.parse(text);
    } catch (err) {
      throw oo(400, 'structure', `HAPI-0450: Failed to parse request body as JSON resource. Error was: ${err.message}`);
    }
    if (body === null || typeof body !== 'object' || (Array.isArray(body) && req.method !== 'PATCH')) {
      throw oo(400, 'structure', 'HAPI-0450: Failed to parse request body as JSON resource: not a JSON object');
    }
    return body;
  }

  async function dispatch(req, url, body, base) {
    const rest = url.pathname.slice(BASE_PATH.length).replace(/^\/+|\/+$/g, '');
    const segments = rest ? rest.split('/') : [];
    const query = queryRecord(url.searchParams);
    const selfUrl = `${base}${rest ? '/' + rest : ''}${url.search}`;
    const [first] = segments;
    const method = req.method === 'HEAD' ? 'GET' : req.method; // node sends no body for HEAD

    if (first === 'metadata' && segments.length === 1 && method === 'GET') {
      return { status: 200, resource: capabilityStatement(base, startedAt, profile, MEDPLUM_LIMITS) };
    }
    if (!first && method === 'GET' && query._getpages) return { status: 200, resource: await pager.page(query, base, selfUrl) };
    if (first && !isResourceType(first)) {
      if (first.startsWith('$')) throw oo(400, 'not-supported', `HAPI-0388: Unknown operation "${first}"`);
      throw oo(404, 'not-found', `HAPI-0302: Unknown resource type '${first}' - Server knows how to handle: see ${base}/metadata`);
    }
    if (segments.length === 1 && method === 'GET') {
      return { status: 200, resource: await pager.search(first, query, base, selfUrl) };
    }
    if (segments.length === 2 && segments[1] === '_search' && method === 'POST') {
      return { status: 200, resource: await pager.search(first, { ...query, ...body }, base, selfUrl) };
    }
    if (segments.length === 1 && method === 'POST' && body && !Array.isArray(body)) delete body.id; // HAPI ignores client ids on create
    const entryMethods = !first && method === 'POST' ? (Array.isArray(body?.entry) ? body.entry : []).map((e) => e?.request?.method) : undefined;

    const fhirRequest = {
      method, url: rest + url.search, pathname: '', params: {}, query: {}, body,
      headers: req.headers, config: { transactions: true },
    };
    if (entryMethods && body?.type === 'batch' && entryMethods.length && entryMethods.every((m) => m === 'GET')) {
      return { status: 200, resource: await readBatch(req, body.entry, base) };
    }
    if (entryMethods) {
      // One journal around the whole bundle: a transaction with any failed entry (even one that
      // Medplum reports inside a 200 response) is rolled back completely.
      return repo.withTransaction(async () => {
        const [outcome, bundle] = ['transaction', 'batch'].includes(body?.type)
          ? [allOk, await new Processor(router, repo, body, fhirRequest).run()]
          : await router.handleRequest(fhirRequest, repo);
        if (getStatus(outcome) >= 400) throw new OperationOutcomeError(outcome);
        const failed = body.type === 'transaction' &&
          bundle.entry?.find((e) => Number.parseInt(e?.response?.status, 10) >= 400);
        if (failed) throw new OperationOutcomeError(failed.response.outcome ?? badRequest('Transaction entry failed'));
        return { status: 200, resource: bundleResponse(bundle, entryMethods, prefer(req)) };
      }, { deferReferenceChecks: body?.type === 'transaction' });
    }
    if (segments.length === 2 && segments[1] === '_history') {
      if (method !== 'GET') throw oo(405, 'not-supported', `HTTP method ${method} is not supported for ${first}/_history`);
      return { status: 200, resource: await pager.history(first, query, base, selfUrl) };
    }
    const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
    const status = getStatus(outcome);
    if (status >= 400) throw new OperationOutcomeError(outcome);
    if (resource?.resourceType === 'Bundle' && resource.type === 'history') {
      return { status, resource: historyBundle(resource, base, selfUrl, query) };
    }
    if (method === 'DELETE') {
      const text = segments.length === 2 ? `Successfully deleted ${first}/${segments[1]}` : 'Conditional delete completed';
      return { status: 200, resource: wireOutcome(oo(200, 'informational', text, 'information').outcome) };
    }
    const createdByUpdate = method === 'PUT' && resource?.meta?.versionId === '1';
    return { status: createdByUpdate ? 201 : status, resource, versioned: true, write: method === 'PUT' || method === 'POST' };
  }

  /**
   * A batch of reads and searches, answered entry by entry as HAPI does: each search pages like a
   * search of its own (first page, `total`, a `next` link to the snapshot) and rejects unknown
   * parameters; an entry that fails answers its own status and OperationOutcome, the others still run.
   */
  async function readBatch(req, entries, base) {
    const entry = [];
    for (const e of entries) {
      const target = String(e?.request?.url ?? '').replace(/^\/+/, '');
      try {
        if (!target || /^https?:/i.test(target)) throw oo(400, 'invalid', `Invalid batch entry URL "${target}": expected a relative [type]?[query] or [type]/[id]`);
        const url = new URL(`${BASE_PATH}/${target}`, 'http://localhost');
        const answer = await dispatch({ method: 'GET', headers: req.headers }, url, undefined, base);
        const r = answer.resource;
        const response = { status: `${answer.status} ${STATUS_CODES[answer.status] ?? ''}`.trim() };
        if (r?.meta?.versionId && r.resourceType !== 'Bundle') {
          response.etag = `W/"${r.meta.versionId}"`;
          response.lastModified = r.meta.lastUpdated;
        }
        entry.push({ resource: r, response });
      } catch (err) {
        const outcome = normalizeOperationOutcome(err);
        const status = err?.httpStatus ?? getStatus(outcome);
        entry.push({ response: { status: `${status} ${STATUS_CODES[status] ?? ''}`.trim(), outcome: wireOutcome(outcome) } });
      }
    }
    return { resourceType: 'Bundle', type: 'batch-response', meta: { lastUpdated: new Date().toISOString() }, entry };
  }

  function bundleResponse(bundle, methods, preference) {
    (bundle.entry ?? []).forEach((entry, i) => {
      const response = entry.response ?? {};
      const code = Number.parseInt(response.status, 10);
      response.status = `${code} ${STATUS_CODES[code] ?? ''}`.trim();
      const res = entry.resource;
      if (code < 300 && res?.id && res.meta?.versionId) {
        response.location = `${res.resourceType}/${res.id}/_history/${res.meta.versionId}`;
        response.etag = `W/"${res.meta.versionId}"`;
        response.lastModified = res.meta.lastUpdated;
        delete response.outcome;
      } else if (response.outcome) response.outcome = wireOutcome(response.outcome);
      if (WRITE_METHODS.has(methods[i]) && preference !== 'representation') delete entry.resource;
    });
    return { ...bundle, id: undefined, meta: { lastUpdated: new Date().toISOString() } };
  }

  function historyBundle(bundle, base, selfUrl, query) {
    const since = query._since ? Date.parse([query._since].flat().at(-1)) : undefined;
    let entry = (bundle.entry ?? []).filter((e) => !since || Date.parse(e.resource.meta.lastUpdated) >= since);
    const total = entry.length;
    if (query._count) entry = entry.slice(0, Number([query._count].flat().at(-1)) || 0);
    entry = entry.map(({ resource: r }) => ({
      fullUrl: `${base}/${r.resourceType}/${r.id}`,
      resource: r,
      request: { method: r.meta.versionId === '1' ? 'POST' : 'PUT', url: r.meta.versionId === '1' ? r.resourceType : `${r.resourceType}/${r.id}` },
      response: { status: r.meta.versionId === '1' ? '201 Created' : '200 OK', etag: `W/"${r.meta.versionId}"`, lastModified: r.meta.lastUpdated },
    }));
    return { resourceType: 'Bundle', meta: { lastUpdated: new Date().toISOString() }, type: 'history', total, link: [{ relation: 'self', url: selfUrl }], entry };
  }

  function prefer(req) {
    return /return=(minimal|representation|OperationOutcome)/i.exec(req.headers.prefer ?? '')?.[1];
  }

  function send(res, status, body, headers = {}) {
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, {
      'Content-Type': 'application/fhir+json; charset=utf-8',
      'Content-Length': Buffer.byteLength(text),
      ...headers,
    });
    res.end(text);
  }

  async function handle(req, res) {
    const started = performance.now();
    const url = new URL(req.url ?? '/', 'http://localhost');
    const base = `http://${req.headers.host ?? 'localhost'}${BASE_PATH}`;
    let status = 500;
    try {
      if (url.pathname !== BASE_PATH && !url.pathname.startsWith(BASE_PATH + '/')) {
        throw oo(404, 'not-found', `Not a FHIR endpoint; the FHIR base is ${BASE_PATH}`);
      }
      if (!['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'].includes(req.method)) {
        throw oo(405, 'not-supported', `HTTP method ${req.method} is not supported`);
      }
      const body = await parseRequest(req, url);
      // HAPI reads a request's resources with its base set: a reference on its own base becomes relative
      if (profile === 'hapi' && body?.resourceType) relativeToBase(body, base);
      const result = await serialized(() => dispatch(req, url, body, base));
      status = result.status;
      const headers = {};
      const r = result.resource;
      let payload = r;
      if (result.versioned && r?.meta?.versionId) {
        const location = `${base}/${r.resourceType}/${r.id}/_history/${r.meta.versionId}`;
        headers.ETag = `W/"${r.meta.versionId}"`;
        headers['Last-Modified'] = new Date(r.meta.lastUpdated).toUTCString();
        headers['Content-Location'] = location;
        if (result.write) headers.Location = location;
        const preference = result.write ? prefer(req) : undefined;
        if (preference === 'minimal') payload = undefined;
        else if (preference?.toLowerCase() === 'operationoutcome') {
          payload = wireOutcome(oo(status, 'informational', `Successfully ${status === 201 ? 'created' : 'updated'} resource "${r.resourceType}/${r.id}/_history/${r.meta.versionId}"`, 'information').outcome);
        }
      }
      send(res, status, payload, headers);
    } catch (err) {
      const outcome = normalizeOperationOutcome(err);
      status = err?.httpStatus ?? getStatus(outcome);
      if (status >= 500) log(`error: ${err?.stack ?? err}`);
      if (!res.headersSent) send(res, status, wireOutcome(outcome));
      else res.destroy();
    } finally {
      log(`${req.method} ${url.pathname} ${status} ${(performance.now() - started).toFixed(1)}ms`);
    }
  }

  return { handle, repo, notifier, profile };
}
