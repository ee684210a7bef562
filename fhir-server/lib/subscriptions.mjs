// R4 Subscription rest-hook notifications the way HAPI FHIR's JPA server sends them.
//
// - Subscriptions are ordinary stored resources. Writes are checked like HAPI's
//   SubscriptionValidatingInterceptor (422 HAPI-0009..0021/1985) when the status is requested/active.
// - After a Subscription with status `requested` (and channel type rest-hook) is committed, it is
//   activated by a second write (a new version with status `active`), as HAPI's
//   SubscriptionActivatingSubscriber does; the create response itself still says `requested`.
// - After every committed write (a whole transaction at once), each active rest-hook Subscription
//   whose criteria match gets a notification: no payload -> empty POST to the endpoint; with a
//   payload -> PUT [endpoint]/[type]/[id] with the resource and `If-Match: "<versionId>"` (HAPI's
//   generic client adds it); deletes only with HAPI's `subscription-send-delete-messages` channel
//   extension (then DELETE [endpoint]/[type]/[id], or the empty POST).
// - Delivery is asynchronous, in order per (subscription, resource), retried with back-off for about
//   a minute and then dropped, like HAPI (hapi-fhir #6002). Criteria matching is core's
//   `matchesSearchRequest` on a `parseSearchRequest` of the criteria.
import http from 'node:http';
import https from 'node:https';
import { OperationOutcomeError, isResourceType, matchesSearchRequest, parseSearchRequest } from '@medplum/core';
import { checkParameterNames } from './paging.mjs';

export const EXT_SEND_DELETE_MESSAGES = 'http://hapifhir.io/fhir/StructureDefinition/subscription-send-delete-messages';
export const EXT_STRIP_VERSION_IDS = 'http://hapifhir.io/fhir/StructureDefinition/subscription-resthook-strip-version-ids';
export const EXT_DELIVER_LATEST_VERSION = 'http://hapifhir.io/fhir/StructureDefinition/subscription-resthook-deliver-latest-version';

/** Default back-off between attempts, in ms: 7 attempts over about 60 s, then give up. */
export const DEFAULT_RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const REQUEST_TIMEOUT_MS = 10_000; // HAPI's client default socket/connect timeout
const JSON_PAYLOADS = new Set(['application/fhir+json', 'application/json', 'application/json+fhir', 'json']);
const XML_PAYLOADS = new Set(['application/fhir+xml', 'application/xml', 'application/xml+fhir', 'xml', 'text/xml']);
const NON_CRITERIA_PARAMS = new Set(['_count', '_sort', '_include', '_revinclude', '_summary', '_elements', '_total', '_format', '_pretty']);

function unprocessable(diagnostics) {
  return new OperationOutcomeError({
    resourceType: 'OperationOutcome',
    id: 'business-rule', // -> 422, like HAPI's UnprocessableEntityException
    issue: [{ severity: 'error', code: 'processing', details: { text: diagnostics }, diagnostics }],
  });
}

function extensionFlag(element, url) {
  const ext = (element?.extension ?? []).find((e) => e?.url === url);
  return ext?.valueBoolean === true || ext?.valueBoolean === 'true';
}

function payloadType(channel) {
  const raw = channel?.payload;
  if (raw === undefined || raw === null || String(raw).trim() === '') return undefined;
  return String(raw).split(';')[0].trim().toLowerCase();
}

/**
 * Parse `Subscription.criteria` like HAPI's SubscriptionCriteriaParser + validator:
 * `Type?params`, `[TypeA,TypeB]` or `*` (every type except Subscription).
 * Returns { types: Set|null, request: SearchRequest|undefined }.
 */
export function parseCriteria(criteria) {
  const field = 'Subscription.criteria';
  const text = typeof criteria === 'string' ? criteria.trim() : '';
  if (!text) throw unprocessable(`HAPI-0011: ${field} must be populated`);
  if (text === '*') return { types: null };
  const multi = /^\[([^\]]*)\]$/.exec(text);
  if (multi) {
    const types = multi[1].split(',').map((t) => t.trim()).filter(Boolean);
    if (!types.length) throw unprocessable(`HAPI-0012: ${field} can not be parsed`);
    for (const t of types) {
      if (!isResourceType(t)) throw unprocessable(`HAPI-0013: ${field} contains invalid/unsupported resource type: ${t}`);
    }
    return { types: new Set(types) };
  }
  const sep = text.indexOf('?');
  const type = sep < 0 ? text : text.slice(0, sep);
  if (/^[A-Za-z]+$/.test(type) && !isResourceType(type)) {
    throw unprocessable(`HAPI-0013: ${field} contains invalid/unsupported resource type: ${type}`);
  }
  if (sep <= 1) throw unprocessable(`HAPI-0014: ${field} must be in the form "{Resource Type}?[params]"`);
  if (type.includes('/')) throw unprocessable(`HAPI-0015: ${field} must be in the form "{Resource Type}?[params]"`);
  if (!isResourceType(type)) throw unprocessable(`HAPI-0012: ${field} can not be parsed`);
  const query = Object.create(null);
  for (const [k, v] of new URLSearchParams(text.slice(sep + 1))) {
    if (NON_CRITERIA_PARAMS.has(k)) continue;
    query[k] = k in query ? [query[k]].flat().concat(v) : v;
  }
  let request;
  try {
    checkParameterNames(type, Object.keys(query));
    request = Object.keys(query).length ? parseSearchRequest(type, query) : undefined;
  } catch (err) {
    const msg = err?.outcome?.issue?.[0]?.diagnostics ?? err?.outcome?.issue?.[0]?.details?.text ?? err?.message;
    throw unprocessable(`HAPI-0009: Invalid subscription criteria submitted: ${text} ${msg}`);
  }
  return { types: new Set([type]), request };
}

/** HAPI's write-time checks for a Subscription (only when its status is requested or active). */
export function validateSubscription(resource) {
  if (resource?.resourceType !== 'Subscription') return;
  const status = resource.status;
  if (!status) throw unprocessable('HAPI-0008: Can not process submitted Subscription - Subscription.status must be populated on this server');
  if (status !== 'requested' && status !== 'active') return;
  parseCriteria(resource.criteria);
  const channel = resource.channel;
  if (!channel?.type) throw unprocessable('HAPI-0020: Subscription.channel.type must be populated');
  if (channel.type !== 'rest-hook') return; // stored, but never activated here (see README)
  const payload = payloadType(channel);
  if (payload !== undefined && !JSON_PAYLOADS.has(payload)) {
    if (XML_PAYLOADS.has(payload)) {
      throw unprocessable(`Subscription.channel.payload ${channel.payload} is not supported by planbridge-fhir (JSON only)`);
    }
    throw unprocessable(`HAPI-1985: Invalid value for Subscription.channel.payload: ${channel.payload}`);
  }
  if (!channel.endpoint || !String(channel.endpoint).trim()) {
    throw unprocessable('HAPI-0021: Rest-hook subscriptions must have Subscription.channel.endpoint defined');
  }
}

/** `channel.header` strings ("Name: value") to a header object, the way HAPI splits them. */
function channelHeaders(channel) {
  const headers = {};
  for (const h of [channel?.header ?? []].flat()) {
    if (typeof h !== 'string') continue;
    const sep = h.indexOf(':');
    if (sep <= 0) continue;
    const name = h.slice(0, sep).trim();
    if (name) headers[name] = h.slice(sep + 1).trim();
  }
  return headers;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref());

function send(url, { method, headers, body }) {
  return new Promise((resolve) => {
    let settled = false;
    const done = (result) => {
      if (!settled) {
        settled = true;
        resolve(result);
      }
    };
    try {
      const lib = url.protocol === 'https:' ? https : http;
      const req = lib.request(url, { method, headers, agent: false, timeout: REQUEST_TIMEOUT_MS }, (res) => {
        res.resume(); // drain; bodies are never looked at or logged
        res.on('end', () => done({ status: res.statusCode }));
        res.on('error', (err) => done({ error: err.code ?? err.message }));
      });
      req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
      req.on('error', (err) => done({ error: err.code ?? err.message }));
      req.end(body);
    } catch (err) {
      done({ error: err.code ?? err.message, permanent: true }); // e.g. an invalid header name
    }
  });
}

export class SubscriptionNotifier {
  /**
   * @param {object} options
   * @param {import('./repo.mjs').HapiLikeRepository} options.repo
   * @param {(fn: () => Promise<unknown>) => Promise<unknown>} options.serialized runs fn between requests
   * @param {(line: string) => void} [options.log]
   * @param {number[]} [options.retryDelaysMs] waits before the 2nd, 3rd, ... attempt
   */
  constructor({ repo, serialized, log = () => {}, retryDelaysMs = DEFAULT_RETRY_DELAYS_MS }) {
    this.repo = repo;
    this.serialized = serialized;
    this.log = log;
    this.retryDelaysMs = retryDelaysMs;
    this.criteriaCache = new Map(); // "id/versionId" -> parsed criteria (or null if unusable)
    this.queues = new Map(); // "subId|Type/id" -> tail promise, keeps one resource's deliveries in order
    repo.onCommit = (writes) => this.committed(writes);
  }

  /** Called by the repository with the writes of one committed request or transaction. */
  committed(writes) {
    for (const write of writes) {
      const { resource } = write;
      if (resource?.resourceType === 'Subscription' && write.action !== 'delete' &&
          resource.status === 'requested' && resource.channel?.type === 'rest-hook') {
        this.serialized(() => this.activate(resource.id)).catch((err) => this.log(`subscription activation failed: ${err?.message ?? err}`));
      }
      for (const sub of this.activeSubscriptions()) {
        if (this.matches(sub, write)) this.enqueue(sub, write);
      }
    }
  }

  async activate(id) {
    const current = this.repo.current('Subscription', id);
    if (current?.status !== 'requested' || current.channel?.type !== 'rest-hook') return;
    // Keep what the client put in meta (tags, security labels, profiles), as HAPI does; the server's
    // own versionId and lastUpdated are assigned anew.
    const { meta, ...rest } = current;
    const { versionId: _v, lastUpdated: _l, ...kept } = meta ?? {};
    const next = Object.keys(kept).length ? { ...rest, meta: kept } : rest;
    await this.repo.updateResource({ ...next, status: 'active' });
    this.log(`subscription Subscription/${id} activated (requested -> active)`);
  }

  *activeSubscriptions() {
    for (const sub of this.repo.resources.get('Subscription')?.values() ?? []) {
      if (sub.status === 'active' && sub.channel?.type === 'rest-hook' && sub.channel.endpoint) yield sub;
    }
  }

  criteria(sub) {
    const key = `${sub.id}/${sub.meta?.versionId}`;
    if (!this.criteriaCache.has(key)) {
      let parsed = null;
      try {
        parsed = parseCriteria(sub.criteria);
      } catch (err) {
        this.log(`subscription Subscription/${sub.id}: unusable criteria ${JSON.stringify(sub.criteria)}: ${err?.message ?? err}`);
      }
      if (this.criteriaCache.size > 1000) this.criteriaCache.clear();
      this.criteriaCache.set(key, parsed);
    }
    return this.criteriaCache.get(key);
  }

  matches(sub, { action, resource }) {
    const criteria = this.criteria(sub);
    if (!criteria) return false;
    const type = resource.resourceType;
    if (criteria.types ? !criteria.types.has(type) : type === 'Subscription') return false;
    if (action === 'delete' && !extensionFlag(sub.channel, EXT_SEND_DELETE_MESSAGES)) return false;
    if (!criteria.request) return true;
    try {
      return matchesSearchRequest(resource, criteria.request);
    } catch (err) {
      this.log(`subscription Subscription/${sub.id}: cannot evaluate ${sub.criteria}: ${err?.message ?? err}`);
      return false;
    }
  }

  enqueue(sub, write) {
    const key = `${sub.id}|${write.resource.resourceType}/${write.resource.id}`;
    const job = { subscriptionId: sub.id, action: write.action, resource: write.resource };
    const tail = (this.queues.get(key) ?? Promise.resolve()).then(() => this.deliver(job));
    const guarded = tail.catch((err) => this.log(`subscription delivery error: ${err?.stack ?? err}`));
    this.queues.set(key, guarded);
    guarded.then(() => {
      if (this.queues.get(key) === guarded) this.queues.delete(key);
    });
  }

  /** The request HAPI would send for this job, or undefined to skip it. */
  buildRequest(sub, job) {
    const channel = sub.channel;
    const headers = { 'User-Agent': 'planbridge-fhir (subscription delivery)', ...channelHeaders(channel) };
    const { resourceType: type, id } = job.resource;
    let resource = job.resource;
    if (!payloadType(channel)) {
      // HAPI's sendNotification: an empty form POST to the endpoint itself, whatever the operation.
      return {
        url: new URL(channel.endpoint),
        method: 'POST',
        headers: { ...headers, 'Content-Type': 'application/x-www-form-urlencoded; charset=UTF-8', 'Content-Length': '0' },
        body: '',
        label: `${type}/${id}`,
        checkStatus: false, // HAPI ignores the response status of a payload-less notification
      };
    }
    const base = String(channel.endpoint).replace(/\/+$/, '');
    const url = new URL(`${base}/${type}/${encodeURIComponent(id)}`);
    const fhirHeaders = { ...headers, Accept: 'application/fhir+json;q=1.0, application/json+fhir;q=0.9' };
    if (job.action === 'delete') {
      return { url, method: 'DELETE', headers: fhirHeaders, body: undefined, label: `${type}/${id}`, checkStatus: true };
    }
    if (extensionFlag(channel, EXT_DELIVER_LATEST_VERSION)) {
      resource = this.repo.current(type, id);
      if (!resource) return undefined; // deleted since: HAPI drops the delivery too
    }
    const body = JSON.stringify(resource);
    const versionId = resource.meta?.versionId;
    if (versionId && !extensionFlag(channel, EXT_STRIP_VERSION_IDS)) fhirHeaders['If-Match'] = `"${versionId}"`;
    return {
      url,
      method: 'PUT',
      headers: { ...fhirHeaders, 'Content-Type': 'application/fhir+json; charset=UTF-8', 'Content-Length': String(Buffer.byteLength(body)) },
      body,
      label: `${type}/${id}/_history/${versionId}`,
      checkStatus: true,
    };
  }

  async deliver(job) {
    const attempts = this.retryDelaysMs.length + 1;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      // Like HAPI, each attempt uses the subscription's current channel settings. Unlike HAPI, a
      // subscription that is no longer active (off, error, deleted) stops its pending deliveries.
      const sub = this.repo.current('Subscription', job.subscriptionId);
      const what = `Subscription/${job.subscriptionId}`;
      if (sub?.status !== 'active' || sub.channel?.type !== 'rest-hook') {
        this.log(`subscription ${what}: ${job.action} ${job.resource.resourceType}/${job.resource.id} dropped (subscription no longer active)`);
        return;
      }
      let request;
      try {
        request = this.buildRequest(sub, job);
      } catch (err) {
        this.log(`subscription ${what}: cannot deliver to endpoint ${JSON.stringify(sub.channel.endpoint)}: ${err?.message ?? err}`);
        return;
      }
      if (!request) {
        this.log(`subscription ${what}: ${job.resource.resourceType}/${job.resource.id} is deleted, not delivered`);
        return;
      }
      if (!['http:', 'https:'].includes(request.url.protocol)) {
        this.log(`subscription ${what}: endpoint scheme ${request.url.protocol} is not supported, not delivered`);
        return;
      }
      const result = await send(request.url, request);
      const host = request.url.host;
      const ok = result.status !== undefined && (!request.checkStatus || result.status < 400);
      const outcome = result.status !== undefined ? String(result.status) : result.error;
      const line = `subscription ${what}: ${request.method} ${request.label} -> ${host} ${outcome} (attempt ${attempt}/${attempts})`;
      if (ok) {
        this.log(line);
        return;
      }
      if (result.permanent || attempt === attempts) {
        this.log(`${line}; giving up`);
        return;
      }
      const wait = this.retryDelaysMs[attempt - 1];
      this.log(`${line}; retrying in ${wait / 1000}s`);
      await sleep(wait);
    }
  }
}
