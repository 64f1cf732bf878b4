import { it } from 'vitest';
import http from 'node:http';
import { FakeOpenAIServer } from '../../lib/testing/index.js';
import { startSampleApp } from '../support/sample-app.js';
import { listen, uniqueSampleUsers } from './throttling-fixture.js';
function get(url: string, agent: http.Agent) {
  return new Promise<number>((res, rej) => { http.get(url, { agent }, (r) => { r.resume(); r.on('end', () => res(r.statusCode!)); }).on('error', rej); });
}
it('t', async () => {
  const fake = await FakeOpenAIServer.start();
  const h = await startSampleApp('express', fake, { RATE_LIMIT_RPM: '5', ...uniqueSampleUsers().env });
  const base = await listen(h.app);
  for (const [name, agent] of [['ka50', new http.Agent({ keepAlive: true, maxSockets: 50 })], ['noka', new http.Agent({ keepAlive: false, maxSockets: Infinity })], ['ka1000', new http.Agent({ keepAlive: true, maxSockets: Infinity })]] as const) {
    const t = performance.now();
    await Promise.all(Array.from({length: 1000}, () => get(`${base}/health`, agent)));
    console.log(name, performance.now() - t);
  }
  const raw = http.createServer((q, s) => s.end('ok'));
  await new Promise<void>((r) => raw.listen(0, '127.0.0.1', r));
  const t = performance.now();
  await Promise.all(Array.from({length: 1000}, () => get(`http://127.0.0.1:${(raw.address() as any).port}/`, new http.Agent({ keepAlive: false }))));
  console.log('raw', performance.now() - t);
  raw.close();
  await h.close(); await fake.close();
}, 60000);
