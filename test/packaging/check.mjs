// Usage: node check.mjs <port> <pid>
// Waits (up to 45 s) for the app on 127.0.0.1:<port>, failing early if process <pid> exits, then sends one
// POST /chat and checks the answer, then that the Grafana dashboard resolves from the app through the package's
// exports map. Exit code 0 = pass; the reason for a failure goes to stderr.
import { readFileSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
const [port, pid] = process.argv.slice(2).map(Number);
const url = `http://127.0.0.1:${port}/chat`;
const body = JSON.stringify({ messages: [{ role: 'user', content: 'Say hello' }] });
const deadline = Date.now() + 45_000;

function fail(message) {
  console.error(message);
  process.exit(1);
}

function alive() {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

let res;
for (;;) {
  if (!alive()) fail(`the app (pid ${pid}) exited before answering`);
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      signal: AbortSignal.timeout(10_000),
    });
    break;
  } catch (err) {
    const code = err?.cause?.code;
    if (code !== 'ECONNREFUSED' && code !== 'ECONNRESET')
      fail(`POST ${url} failed: ${err?.cause?.message ?? err}`);
    if (Date.now() > deadline) fail(`the app did not listen on port ${port} within 45 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const text = await res.text();
if (res.status !== 200) fail(`POST /chat answered ${res.status}, expected 200: ${text}`);
let json;
try {
  json = JSON.parse(text);
} catch {
  fail(`POST /chat answered non-JSON: ${text}`);
}
if (json.content !== 'Echo: Say hello')
  fail(`content is ${JSON.stringify(json.content)}, expected "Echo: Say hello": ${text}`);
if (typeof json.openai_request_id !== 'string' || !json.openai_request_id.startsWith('req_')) {
  fail(`openai_request_id ${JSON.stringify(json.openai_request_id)} does not start with "req_": ${text}`);
}
console.log(`POST /chat -> 200 ${text}`);

// The Responses API through the same pipeline, from the packed tarball.
const rres = await fetch(`http://127.0.0.1:${port}/responses`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ input: 'Say hello' }),
  signal: AbortSignal.timeout(10_000),
});
const rtext = await rres.text();
if (rres.status !== 200) fail(`POST /responses answered ${rres.status}, expected 200: ${rtext}`);
const rjson = JSON.parse(rtext);
if (rjson.output_text !== 'Echo: Say hello' || !(rjson.input_tokens > 0))
  fail(`POST /responses answered ${rtext}, expected output_text "Echo: Say hello" and input tokens`);
console.log(`POST /responses -> 200 ${rtext}`);

// The app runs in its own directory (run.sh starts it there): resolve the dashboard as a user's tooling would.
const appDir = realpathSync(`/proc/${pid}/cwd`);
let dashboardFile;
try {
  dashboardFile = createRequire(`${appDir}/package.json`).resolve(
    'nestjs-openai-production/grafana-dashboard.json',
  );
} catch (err) {
  fail(`nestjs-openai-production/grafana-dashboard.json does not resolve from ${appDir}: ${err.message}`);
}
const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8'));
if (!Array.isArray(dashboard.panels) || dashboard.panels.length === 0) fail(`${dashboardFile} has no panels`);
console.log(`grafana-dashboard.json: ${dashboard.panels.length} panels (${dashboardFile})`);
