import type { Cluster, ClusterOptions, Redis, RedisOptions } from 'ioredis';
import { clusterKeySlot } from './cluster-slot.js';

/** A seed node of a Redis Cluster: `'host:port'` or `{ host, port }`. */
export type RedisClusterNode = string | { host: string; port: number };

/** A Redis Cluster for the store to open (and close on shutdown). */
export interface RedisClusterConfig {
  /**
   * Seed nodes; the client discovers the rest of the cluster from any one of them. List a few (one per
   * master) so that a dead seed does not stop the boot.
   * @example ['10.0.0.1:6379', '10.0.0.2:6379', '10.0.0.3:6379']
   */
  nodes: RedisClusterNode[];
  /**
   * ioredis `Cluster` options laid over the store's fail-fast defaults (`CLUSTER_DEFAULTS`):
   * `enableOfflineQueue: false`, `maxRedirections: 6`, `retryDelayOnFailover`/`retryDelayOnClusterDown`/
   * `retryDelayOnTryAgain: 50`, `slotsRefreshTimeout: 1000`, `slotsRefreshInterval: 2000`,
   * `clusterRetryStrategy` (100 ms growing to 2 s), `redisOptions.connectTimeout: 2000`,
   * `redisOptions.maxRetriesPerRequest: 1`, `redisOptions.autoResendUnfulfilledCommands: false`.
   */
  options?: ClusterOptions;
}

/**
 * The `Cluster` options the store opens a cluster with (a user's `cluster.options` win). They make a
 * failure fast instead of queued: no offline queue (a command while the cluster is reconnecting fails
 * at once and the failure policy answers), few and short redirection retries, a short slot-refresh
 * timeout and interval (a failover is seen within about 2 s), a short node connect timeout (a dead
 * host that drops packets costs 2 s per connect attempt instead of ioredis' 10 s), and no replay of
 * unanswered commands after a reconnect (they were already answered by the failure policy).
 */
export const CLUSTER_DEFAULTS: ClusterOptions = {
  enableOfflineQueue: false,
  enableReadyCheck: true,
  maxRedirections: 6,
  retryDelayOnFailover: 50,
  retryDelayOnClusterDown: 50,
  retryDelayOnTryAgain: 50,
  slotsRefreshTimeout: 1_000,
  slotsRefreshInterval: 2_000,
  clusterRetryStrategy: (times) => Math.min(100 * times, 2_000),
  redisOptions: {
    connectTimeout: 2_000,
    maxRetriesPerRequest: 1,
    autoResendUnfulfilledCommands: false,
  },
};

/** `CLUSTER_DEFAULTS` under the user's options (`redisOptions` merged field by field). */
export function clusterOptions(user: ClusterOptions = {}, extraRedis: RedisOptions = {}): ClusterOptions {
  return {
    ...CLUSTER_DEFAULTS,
    ...user,
    redisOptions: { ...CLUSTER_DEFAULTS.redisOptions, ...extraRedis, ...user.redisOptions },
  };
}

/** True for the cluster URL schemes `redis+cluster://` and `rediss+cluster://`. */
export function isClusterUrl(url: string): boolean {
  return /^rediss?\+cluster:\/\//i.test(url);
}

/**
 * Parses `redis+cluster://[user:password@]host1:port1,host2:port2[/0]` (`rediss+cluster://` for TLS)
 * into seed nodes and the options every node connection shares (credentials, TLS).
 * @throws Error when the URL lists no `host:port`.
 */
export function parseClusterUrl(url: string): {
  nodes: Array<{ host: string; port: number }>;
  redisOptions: RedisOptions;
} {
  const m = /^(rediss?)\+cluster:\/\/(?:([^@/]*)@)?([^/?#]+)(?:\/(\d*))?(?:[?#].*)?$/i.exec(url);
  if (!m) throw new Error('expected redis+cluster://host1:port1,host2:port2');
  const [, scheme, auth, hostList, db] = m;
  if (db && db !== '0') throw new Error('a Redis Cluster has database 0 only');
  const nodes = hostList.split(',').map((hp) => parseNode(hp.trim()));
  const redisOptions: RedisOptions = {};
  if (auth) {
    const colon = auth.indexOf(':');
    const user = colon === -1 ? '' : decodeURIComponent(auth.slice(0, colon));
    const password = decodeURIComponent(colon === -1 ? auth : auth.slice(colon + 1));
    if (user) redisOptions.username = user;
    if (password) redisOptions.password = password;
  }
  if (scheme.toLowerCase() === 'rediss') redisOptions.tls = {};
  return { nodes, redisOptions };
}

/** `'host:port'` or `{ host, port }` as `{ host, port }`. @throws Error on anything else. */
export function parseNode(node: RedisClusterNode): { host: string; port: number } {
  if (typeof node !== 'string') {
    if (node && typeof node.host === 'string' && node.host && Number.isInteger(node.port) && node.port > 0)
      return { host: node.host, port: node.port };
    throw new Error(`a node must be "host:port" or { host, port }, got ${JSON.stringify(node)}`);
  }
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(node);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port < 1 || port > 65_535) throw new Error(`"${node}" is not host:port`);
  return { host: m[1], port };
}

/** The options shared by a plain URL's connection that a cluster reached through it must keep. */
export function sharedNodeOptions(client: Redis): RedisOptions {
  const o = client.options;
  return {
    ...(o.username ? { username: o.username } : {}),
    ...(o.password ? { password: o.password } : {}),
    ...(o.tls ? { tls: o.tls } : {}),
  };
}

/** A Redis connection error (as opposed to an error reply such as a script error). */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | undefined;
  if (!e) return false;
  if (e.code && /^E[A-Z]+$/.test(e.code)) return true;
  return /connection is closed|connect etimedout|stream isn't writeable|cluster is ended|CLUSTERDOWN|Too many Cluster redirections|did not answer|failed to refresh slots/i.test(
    e.message ?? '',
  );
}

const nodeKey = (r: Redis) => `${r.options.host ?? '127.0.0.1'}:${r.options.port ?? 6379}`;

/** Health of a Redis Cluster as the store sees it. */
export interface ClusterHealth {
  /**
   * `cluster_state` from the masters' `CLUSTER INFO`: `ok` when every master that answers says `ok`,
   * else the first other state (`fail`); `fail` when none answers; `unknown` before the first check.
   */
  state: string;
  /** `host:port` of the masters (nodes holding slots) the client knows. */
  masters: string[];
  /** Masters known to be unreachable (`host:port`). */
  mastersDown: string[];
  /** True when every master answers and `cluster_state` is `ok`. */
  healthy: boolean;
}

/** Options of `ClusterMonitor`. */
export interface ClusterMonitorOptions {
  /** Interval of the background check (ms). */
  intervalMs: number;
  /** Longest wait for one node's answer in a check (ms). */
  timeoutMs: number;
  /**
   * Opens a short-lived plain connection to a node (a master the cluster client lost) and returns its
   * `CLUSTER INFO`.
   */
  probe: (host: string, port: number, timeoutMs: number) => Promise<string>;
}

/**
 * Per-master health of a Redis Cluster client, so an operation whose slot lives on a dead master fails
 * at once (the failure policy answers) instead of waiting for the command timeout, while the other
 * masters keep serving. A master is marked down as soon as its connection ends, reports a connection
 * error, or times out on an operation; it is marked up again only by the background check, which asks
 * every master for `CLUSTER INFO` (a master can answer PING while it refuses every key with CLUSTERDOWN:
 * only `cluster_state:ok` counts as up) and refreshes the slot table while anything is wrong (to follow
 * a failover promptly).
 */
export class ClusterMonitor {
  private readonly down = new Map<string, string>();
  private state = 'unknown';
  private healthyNow = true;
  private timer?: NodeJS.Timeout;
  private checking?: Promise<ClusterHealth>;
  private readonly listeners: Array<[string, (...args: any[]) => void]> = [];
  /** Called when `healthy` changes, with the reason when it became false. */
  onChange?: (healthy: boolean, reason: string) => void;

  constructor(
    readonly cluster: Cluster,
    private readonly options: ClusterMonitorOptions,
  ) {
    this.listen('-node', (redis: Redis) => {
      const key = nodeKey(redis);
      if (this.masters().includes(key)) this.markDown(key, 'connection closed');
    });
    this.listen('node error', (err: unknown, key?: string) => {
      if (key && isConnectionError(err) && this.masters().includes(key))
        this.markDown(key, (err as Error)?.message ?? String(err));
    });
  }

  private listen(event: string, fn: (...args: any[]) => void): void {
    this.cluster.on(event, fn);
    this.listeners.push([event, fn]);
  }

  /** Starts the background check. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.check().catch(() => undefined), this.options.intervalMs);
    this.timer.unref();
  }

  /** Stops the check and detaches from the client. */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const [event, fn] of this.listeners) this.cluster.off(event, fn);
  }

  /** Masters holding slots (`host:port`), from the client's slot table. */
  masters(): string[] {
    const out = new Set<string>();
    for (const owners of this.cluster.slots) if (owners?.[0]) out.add(owners[0]);
    return [...out];
  }

  /** The master (`host:port`) holding the slot of `key`, when the slot table knows it. */
  masterOf(key: string): string | undefined {
    return this.cluster.slots[clusterKeySlot(key)]?.[0];
  }

  /** Why the master holding `key` is down, or undefined when it is not known to be down. */
  downReason(key: string): string | undefined {
    const master = this.masterOf(key);
    const reason = master === undefined ? undefined : this.down.get(master);
    return reason === undefined ? undefined : `Redis Cluster master ${master} is down (${reason})`;
  }

  /** Records a failed operation on `key`'s master (a connection error or a timeout). */
  reportFailure(key: string, err: unknown): void {
    const master = this.masterOf(key);
    if (master !== undefined && isConnectionError(err)) this.markDown(master, (err as Error)?.message);
  }

  /** The health as last seen, without a round trip. */
  get health(): ClusterHealth {
    const masters = this.masters();
    return {
      state: this.state,
      masters,
      mastersDown: masters.filter((m) => this.down.has(m)),
      healthy: this.healthyNow,
    };
  }

  private markDown(master: string, reason: string): void {
    if (this.down.has(master)) return;
    this.down.set(master, reason);
    this.update();
  }

  private update(): void {
    // A master that no longer holds slots (replaced by a promoted replica) no longer counts.
    const masters = new Set(this.masters());
    for (const m of this.down.keys()) if (!masters.has(m)) this.down.delete(m);
    const healthy = this.down.size === 0 && (this.state === 'ok' || this.state === 'unknown');
    if (healthy === this.healthyNow) return;
    this.healthyNow = healthy;
    const reason = healthy
      ? ''
      : this.down.size
        ? `Redis Cluster master${this.down.size > 1 ? 's' : ''} ${[...this.down].map(([m, r]) => `${m} (${r})`).join(', ')} down`
        : `Redis Cluster cluster_state is ${this.state}`;
    this.onChange?.(healthy, reason);
  }

  /**
   * Asks every master for `CLUSTER INFO` (through the client's connection, else a fresh probe
   * connection when it is known lost); updates the health and returns it. Concurrent calls share
   * one check.
   * @param timeoutMs longest wait for one node (ms); default: the monitor's `timeoutMs`.
   */
  check(timeoutMs = this.options.timeoutMs): Promise<ClusterHealth> {
    this.checking ??= this.runCheck(timeoutMs).finally(() => (this.checking = undefined));
    return this.checking;
  }

  private async runCheck(timeoutMs: number): Promise<ClusterHealth> {
    const masters = this.masters();
    const pool = new Map(this.cluster.nodes('master').map((r) => [nodeKey(r), r]));
    // Each master's own view: a master that answers but says cluster_state:fail (just restarted, or in a
    // minority) refuses its keys with CLUSTERDOWN, so it counts as down too.
    const results = await Promise.all(
      masters.map(async (m) => {
        const r = pool.get(m);
        try {
          let info: string;
          // The client's own connection (connecting it now if it is still lazy), unless it is known lost.
          if (r && !this.down.has(m) && r.status !== 'end' && r.status !== 'close')
            info = String(await withTimeout(r.cluster('INFO'), timeoutMs));
          else {
            const i = m.lastIndexOf(':');
            info = await this.options.probe(m.slice(0, i), Number(m.slice(i + 1)), timeoutMs);
          }
          const state = /cluster_state:(\w+)/.exec(info)?.[1] ?? 'unknown';
          return { m, answered: true, state, reason: `cluster_state:${state}` };
        } catch (err) {
          return { m, answered: false, state: 'unknown', reason: (err as Error)?.message ?? String(err) };
        }
      }),
    );
    const answered = results.filter((r) => r.answered);
    this.state = answered.length === 0 ? 'fail' : (answered.find((r) => r.state !== 'ok')?.state ?? 'ok');
    for (const res of results) {
      if (res.answered && res.state === 'ok') this.down.delete(res.m);
      else this.down.set(res.m, res.reason);
    }
    if (this.down.size > 0 || this.state !== 'ok') this.cluster.refreshSlotsCache();
    this.update();
    return this.health;
  }
}

/** Rejects with `no answer in <ms> ms` when `p` takes longer. */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e: unknown) => (clearTimeout(t), reject(e)),
    );
  });
}
