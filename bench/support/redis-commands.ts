import type { Redis } from 'ioredis';
import { cannon } from './http.js';
import { Samples, summarize, type Summary } from './stats.js';

/** One bare ioredis round trip on this machine (sequential PINGs): wall time, and CPU of this process per PING (ms). */
export async function pingBaseline(client: Redis, n: number): Promise<{ wall: Summary; cpuMs: number }> {
  for (let i = 0; i < 200; i++) await client.ping();
  const samples = new Samples(n);
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await client.ping();
    samples.push(performance.now() - t0);
  }
  const cpu = process.cpuUsage(cpu0);
  return { wall: summarize(samples.values()), cpuMs: (cpu.user + cpu.system) / 1000 / n };
}

/** `INFO commandstats` as { command: calls }. */
export async function commandStats(client: Redis): Promise<Record<string, number>> {
  const info = await client.info('commandstats');
  const out: Record<string, number> = {};
  for (const line of info.split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim());
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

export interface CommandLine {
  command: string;
  perRequest: number;
}

/** What one client command of the library does, from its keys and argument shape (see lib/storage/redis.store.ts). */
export interface Classified {
  what: string;
  /** On the request path: awaited before the response is sent. */
  onPath: boolean;
  /** Order of the step on the request path (for display). */
  order: number;
}

/**
 * Classifies a client command by key and script shape (see lib/storage/redis.store.ts): CONSUME has ARGV
 * now + 6 per window (2 keys per window: 1 + 3 per key), its windows possibly of several keys (the joint
 * reservation); ADJUST has 2 ARGV per window (as many as keys); INCREMENT_FIELDS one key, ttl + pairs.
 */
export function classify(args: string[]): Classified {
  const cmd = args[0]!.toLowerCase();
  if (cmd === 'evalsha' || cmd === 'eval') {
    const numkeys = Number(args[2]);
    const keys = args.slice(3, 3 + numkeys);
    const argv = args.slice(3 + numkeys);
    const has = (re: RegExp) => keys.some((k) => re.test(k));
    const consume = argv.length === 1 + 3 * numkeys;
    const adjust = argv.length === numkeys;
    const cost = Number(argv[1]);
    if (has(/rl:req:/))
      return consume
        ? { what: 'request window, consume (guard)', onPath: true, order: 1 }
        : { what: 'request window, adjust', onPath: true, order: 1.5 };
    if (has(/:leases$/) || (has(/\{budget:project\}/) && !consume && !adjust))
      return { what: 'project budget lease (take, raise or return)', onPath: false, order: 7 };
    const parts = [
      has(/:rl:tok:/) && 'token window',
      has(/\}:budget:/) && 'user budget',
      has(/\{budget:project\}/) && 'project budget',
    ].filter(Boolean);
    if (parts.length && (consume || adjust)) {
      const what = parts.join(' + ');
      if (consume && cost > 0) return { what: `${what}: reserve (one script)`, onPath: true, order: 2 };
      if (consume) return { what: `${what}: read (cost 0)`, onPath: false, order: 8 };
      return { what: `${what}: settle (one script; issued, not awaited)`, onPath: false, order: 5 };
    }
    if (has(/usage:/)) {
      const who = has(/\{usage:project:/) ? 'project' : 'user';
      const period = has(/:\d{4}-\d{2}-\d{2}\}?$/) ? 'day' : 'month';
      return { what: `usage ledger ${who}/${period} (flushed once per interval)`, onPath: false, order: 9 };
    }
    if (has(/breaker/)) return { what: `breaker ${cmd} (state read or report)`, onPath: false, order: 9.5 };
    return { what: `${cmd} ${keys[0] ?? ''}`, onPath: true, order: 10 };
  }
  if (cmd === 'set' && args.some((a) => a.toUpperCase() === 'NX'))
    return { what: 'budget alert, SET NX', onPath: false, order: 8.5 };
  if (cmd === 'subscribe' || cmd === 'publish' || cmd === 'ping')
    return { what: `${cmd} (breaker/pacing broadcast)`, onPath: false, order: 11 };
  return { what: `${cmd} ${args[1] ?? ''}`.trim(), onPath: true, order: 10 };
}

export interface RedisCommandReport {
  requests: number;
  /** `INFO commandstats` delta per request, INFO itself excluded. */
  stats: CommandLine[];
  /** MONITOR over `monitored` requests: client commands per request, classified. */
  monitored: number;
  clientCommands: Array<Classified & { perRequest: number }>;
  /** Commands run inside the Lua scripts (no round trip of their own), per request. */
  scriptCommands: CommandLine[];
  /** A bare PING round trip from this process, for scale. */
  ping: { wall: Summary; cpuMs: number };
}

/**
 * Part C: Redis commands per `/guarded` request. INFO commandstats before and after `requests`
 * sequential requests (counts every command, inside scripts too), then MONITOR over `monitored`
 * requests to tell which client command is which step and which commands ran inside scripts.
 */
export async function redisCommands(
  admin: Redis,
  monitorClient: Redis,
  url: string,
  requests: number,
  monitored: number,
): Promise<RedisCommandReport> {
  const settle = () => new Promise((r) => setTimeout(r, 300));
  await settle();
  const before = await commandStats(admin);
  const run = await cannon(url, 1, { amount: requests });
  if (run.result['2xx'] !== requests)
    throw new Error(`part C: ${run.result['2xx']} of ${requests} requests answered 2xx`);
  await settle();
  const after = await commandStats(admin);
  const stats: CommandLine[] = [];
  for (const [command, calls] of Object.entries(after)) {
    if (command === 'info') continue;
    const delta = calls - (before[command] ?? 0);
    if (delta > 0) stats.push({ command, perRequest: delta / requests });
  }
  stats.sort((a, b) => b.perRequest - a.perRequest);

  // The bench's own connection (INFO, the PINGs below) is not the app's.
  await admin.ping();
  const own = `127.0.0.1:${(admin as unknown as { stream: { localPort: number } }).stream.localPort}`;
  const monitor = await monitorClient.monitor();
  const client = new Map<string, Classified & { count: number }>();
  const inScripts = new Map<string, number>();
  monitor.on('monitor', (_time: string, args: string[], source: string) => {
    const cmd = args[0]!.toLowerCase();
    if (cmd === 'info' || cmd === 'monitor' || source === own) return;
    if (source === 'lua') {
      inScripts.set(cmd, (inScripts.get(cmd) ?? 0) + 1);
      return;
    }
    const c = classify(args);
    const seen = client.get(c.what);
    if (seen) seen.count++;
    else client.set(c.what, { ...c, count: 1 });
  });
  await settle();
  const mrun = await cannon(url, 1, { amount: monitored });
  if (mrun.result['2xx'] !== monitored)
    throw new Error(`part C (monitor): ${mrun.result['2xx']} of ${monitored} requests answered 2xx`);
  await settle();
  const ended = new Promise((r) => monitor.once('end', r));
  monitor.disconnect();
  await ended;
  const ping = await pingBaseline(admin, 2_000);
  return {
    ping,
    requests,
    stats,
    monitored,
    clientCommands: [...client.values()]
      .map(({ count, ...c }) => ({ ...c, perRequest: count / monitored }))
      .sort((a, b) => a.order - b.order),
    scriptCommands: [...inScripts.entries()]
      .map(([command, n]) => ({ command, perRequest: n / monitored }))
      .sort((a, b) => b.perRequest - a.perRequest),
  };
}
