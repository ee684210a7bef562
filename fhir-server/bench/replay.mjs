#!/usr/bin/env node
// Replays a recording (bench/record.mjs) through a fresh app, one request at a time, and reports the CPU the
// server spent per transaction (`transaction` and `batch` Bundles posted to the base; the other requests count
// only in the total). The clock is fixed per request (request i sees 2026-01-01T00:00:00Z + i s), so two replays
// of one recording answer byte for byte alike unless the code answers differently: compare the `--out` files of
// two versions of lib/ (`--lib`) to prove a change answers the same.
// The server's options come from the recording's `argv` line (profile, referential integrity on delete, external
// references); without one, `--profile` (default hapi) and the two flags below.
// Usage: node bench/replay.mjs RECORDING [--out ANSWERS.jsonl] [--lib DIR] [--profile hapi|medplum]
//        [--rounds N] [--cpu-prof FILE] [--referential-integrity-on-delete] [--allow-external-references]
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    out: { type: 'string' },
    lib: { type: 'string', default: new URL('../lib', import.meta.url).pathname },
    profile: { type: 'string', default: 'hapi' },
    rounds: { type: 'string', default: '1' },
    'cpu-prof': { type: 'string' },
    'referential-integrity-on-delete': { type: 'boolean', default: false },
    'allow-external-references': { type: 'boolean', default: false },
  },
});
if (positionals.length !== 1) {
  process.stderr.write('usage: node bench/replay.mjs RECORDING [--out FILE] [--lib DIR] [--profile P] [--rounds N]\n');
  process.exit(2);
}

const RealDate = Date;
const EPOCH = RealDate.UTC(2026, 0, 1);
let clock = EPOCH;
globalThis.Date = class extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(clock);
    else super(...args);
  }

  static now() {
    return clock;
  }
};
// Random UUIDs (paging snapshots, Medplum's ids) counted instead, so they too are alike from one replay to the next.
let uuids = 0;
const countedUuid = () => `00000000-0000-4000-8000-${String(++uuids).padStart(12, '0')}`;
const nodeCrypto = createRequire(import.meta.url)('node:crypto');
nodeCrypto.randomUUID = countedUuid;
if (globalThis.crypto) Object.defineProperty(globalThis.crypto, 'randomUUID', { value: countedUuid, configurable: true });
syncBuiltinESMExports();
globalThis.WebSocket ??= class WebSocket {
  constructor() {
    throw new Error('WebSocket is not available in planbridge-fhir');
  }
};

const lib = resolve(values.lib);
const { loadDefinitions, loadTerminology } = await import(`${lib}/schema.mjs`);
const { createApp } = await import(`${lib}/app.mjs`);
loadDefinitions();
loadTerminology();

const lines = readFileSync(positionals[0], 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line));
const records = lines.filter((line) => !line.argv);
const argv = lines.find((line) => line.argv)?.argv;
const options = argv
  ? parseArgs({ args: argv, strict: false, options: { profile: { type: 'string', default: 'medplum' } } }).values
  : values;
const isTransaction = (r) => r.method === 'POST' && /^\/baseR4\/?(\?|$)/.test(r.url) && /"type"\s*:\s*"(transaction|batch)"/.test(r.body);

async function replay() {
  clock = EPOCH;
  uuids = 0;
  const app = createApp({
    profile: options.profile,
    referentialIntegrityOnDelete: Boolean(options['referential-integrity-on-delete']),
    allowExternalReferences: Boolean(options['allow-external-references']),
    subscriptionRetryDelaysMs: [],
  });
  const answers = [];
  let transactions = 0;
  let transactionMicros = 0;
  let allMicros = 0;
  let statusDiffs = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    clock = EPOCH + i * 1000;
    const req = Readable.from(r.body ? [Buffer.from(r.body)] : []);
    Object.assign(req, { method: r.method, url: r.url, headers: r.headers });
    let answer = {};
    const res = {
      headersSent: false,
      writeHead(status, headers) {
        answer = { status, headers };
        this.headersSent = true;
      },
      end(text) {
        answer.body = text ?? '';
      },
      destroy() {
        answer = { destroyed: true };
      },
    };
    const before = process.cpuUsage();
    await app.handle(req, res);
    const used = process.cpuUsage(before);
    const micros = used.user + used.system;
    allMicros += micros;
    if (isTransaction(r)) {
      transactions++;
      transactionMicros += micros;
    }
    if (r.status !== undefined && answer.status !== r.status) statusDiffs++;
    answers.push(JSON.stringify(answer));
  }
  return { answers, transactions, transactionMicros, allMicros, statusDiffs };
}

let session;
const post = (method, params) => new Promise((ok, fail) => session.post(method, params, (err, r) => (err ? fail(err) : ok(r))));
if (values['cpu-prof']) {
  const inspector = await import('node:inspector');
  session = new inspector.Session();
  session.connect();
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
}
const rounds = [];
let last;
for (let round = 0; round < Number(values.rounds); round++) {
  last = await replay();
  rounds.push(last);
}
if (session) writeFileSync(values['cpu-prof'], JSON.stringify((await post('Profiler.stop')).profile));
if (values.out) writeFileSync(values.out, `${last.answers.join('\n')}\n`);
const perTransaction = rounds.map((r) => Number((r.transactionMicros / Math.max(1, r.transactions) / 1000).toFixed(3)));
process.stdout.write(`${JSON.stringify({
  requests: records.length,
  transactions: last.transactions,
  statusDiffsFromRecording: last.statusDiffs,
  cpuMsPerTransaction: perTransaction,
  cpuMsAllRequests: rounds.map((r) => Number((r.allMicros / 1000).toFixed(1))),
})}\n`);
