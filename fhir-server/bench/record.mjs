// Recording for replays (bench/replay.mjs): with PLANBRIDGE_FHIR_RECORD=FILE, server.mjs appends one JSON line per
// request to FILE (`%p` in FILE: the server's pid, one file per server): first the server's options (`argv`), then
// per request the request (method, url, headers, body) and the answer (status, headers, body). Test traffic only:
// bodies are written as they are, so never point a server holding real data at it.
import { appendFileSync } from 'node:fs';
import { Readable } from 'node:stream';

/**
 * `handle(req, res)` wrapped so that every exchange is appended to `path`. The app reads the request from a copy
 * of its body (same method, url and headers); the answer is written to the real response unchanged.
 * @param {(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => Promise<void>} handle
 * @param {string} path
 */
export function recording(handle, path) {
  path = path.replaceAll('%p', String(process.pid));
  appendFileSync(path, `${JSON.stringify({ argv: process.argv.slice(2) })}\n`);
  return (req, res) => new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('error', reject);
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const copy = Readable.from(body.length ? [body] : []);
      Object.assign(copy, { method: req.method, url: req.url, headers: req.headers });
      let status;
      let headers;
      const writeHead = res.writeHead.bind(res);
      const end = res.end.bind(res);
      res.writeHead = (code, head) => {
        status = code;
        headers = head;
        return writeHead(code, head);
      };
      res.end = (text) => {
        const line = { method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8'), status, resHeaders: headers, resBody: text ?? '' };
        appendFileSync(path, `${JSON.stringify(line)}\n`);
        return end(text);
      };
      handle(copy, res).then(resolve, reject);
    });
  });
}
