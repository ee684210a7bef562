#!/usr/bin/env node
// planbridge local FHIR R4 server: node:http in front of Medplum's FhirRouter + MemoryRepository.
// Usage: node server.mjs [--profile medplum|hapi] [--host 127.0.0.1] [--port 8090] [--page-size 20]
//        [--subscription-retry-delays 1,2,4,8,15,30] [--referential-integrity-on-delete] [--allow-external-references]
//        [--quiet] [--exit-on-stdin-close]
import { fstatSync, writeSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

const PROFILE_NAMES = ['medplum', 'hapi']; // lib/app.mjs PROFILES (not imported: core needs the WebSocket stub first)
const USAGE = 'usage: node server.mjs [--profile medplum|hapi (default medplum: Medplum\'s transaction limits)] [--host HOST] [--port PORT (0 = any free port)] [--page-size N] ' +
  '[--subscription-retry-delays S1,S2,... (seconds between delivery attempts)] ' +
  '[--referential-integrity-on-delete (409 HAPI-0550 for deleting a referenced resource)] ' +
  '[--allow-external-references (store absolute references to other servers instead of HAPI-0507)] [--quiet] [--exit-on-stdin-close]';

function options() {
  try {
    const { values } = parseArgs({
      options: {
        profile: { type: 'string', default: 'medplum' },
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '8090' },
        'page-size': { type: 'string', default: '20' },
        'subscription-retry-delays': { type: 'string', default: '1,2,4,8,15,30' },
        'referential-integrity-on-delete': { type: 'boolean', default: false },
        'allow-external-references': { type: 'boolean', default: false },
        quiet: { type: 'boolean', default: false },
        'exit-on-stdin-close': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
    if (values.help) {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    }
    const port = Number(values.port);
    const pageSize = Number(values['page-size']);
    if (!PROFILE_NAMES.includes(values.profile)) {
      throw new Error(`invalid --profile ${values.profile} (use ${PROFILE_NAMES.join(' or ')})`);
    }
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid --port ${values.port}`);
    if (!Number.isInteger(pageSize) || pageSize < 1) throw new Error(`invalid --page-size ${values['page-size']}`);
    const rawDelays = values['subscription-retry-delays'].trim();
    const retryDelaysMs = rawDelays ? rawDelays.split(',').map((d) => Math.round(Number(d) * 1000)) : [];
    if (retryDelaysMs.some((d) => !Number.isFinite(d) || d < 0)) {
      throw new Error(`invalid --subscription-retry-delays ${values['subscription-retry-delays']}`);
    }
    return { ...values, port, pageSize, retryDelaysMs };
  } catch (err) {
    process.stderr.write(`${err.message}\n${USAGE}\n`);
    process.exit(2);
  }
}

const opts = options();
// A log line per request: when stderr is a file, node's process.stderr writes each chunk with fs.writeSync
// anyway, so write it straight to the descriptor (same bytes, same moment) without the stream machinery.
const stderrIsFile = (() => {
  try {
    return fstatSync(2).isFile();
  } catch {
    return false;
  }
})();
const writeLog = (text) => {
  if (stderrIsFile) {
    try {
      writeSync(2, text);
      return;
    } catch {
      // as before: let the stream report it
    }
  }
  process.stderr.write(text);
};
const log = opts.quiet ? () => {} : (line) => writeLog(`${new Date().toISOString()} ${line}\n`);

// @medplum/core touches a global WebSocket when it is imported; Node 20 has none. Nothing here uses it.
globalThis.WebSocket ??= class WebSocket {
  constructor() {
    throw new Error('WebSocket is not available in planbridge-fhir');
  }
};
const { loadDefinitions, loadTerminology } = await import('./lib/schema.mjs');
const { createApp, BASE_PATH } = await import('./lib/app.mjs');

loadDefinitions();
const app = createApp({
  pageSize: opts.pageSize, log, subscriptionRetryDelaysMs: opts.retryDelaysMs, profile: opts.profile,
  referentialIntegrityOnDelete: opts['referential-integrity-on-delete'],
  allowExternalReferences: opts['allow-external-references'],
});
log(`profile ${opts.profile}`);
// PLANBRIDGE_FHIR_RECORD=FILE: every request and answer appended to FILE, for bench/replay.mjs (test traffic only).
const handle = process.env.PLANBRIDGE_FHIR_RECORD
  ? (await import('./bench/record.mjs')).recording(app.handle, process.env.PLANBRIDGE_FHIR_RECORD)
  : app.handle;
const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    log(`error: ${err?.stack ?? err}`);
    res.destroy();
  });
});
server.keepAliveTimeout = 65_000;

let stopping = false;
function shutdown(reason) {
  if (stopping) return;
  stopping = true;
  log(`stopping (${reason})`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('uncaughtException', (err) => log(`uncaught: ${err?.stack ?? err}`));
process.on('unhandledRejection', (err) => log(`unhandled rejection: ${err?.stack ?? err}`));
if (opts['exit-on-stdin-close']) {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}

server.on('error', (err) => {
  process.stderr.write(`cannot listen on ${opts.host}:${opts.port}: ${err.message}\n`);
  process.exit(1);
});
server.listen(opts.port, opts.host, () => {
  const { port } = server.address();
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  process.stdout.write(`planbridge-fhir listening on http://${host}:${port}${BASE_PATH}\n`);
  setImmediate(loadTerminology); // warm the value sets used for required-binding checks
});
