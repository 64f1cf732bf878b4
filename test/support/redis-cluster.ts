import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { sharedRedisUrl, waitFor } from './redis.js';

/**
 * Whether a Redis Cluster can be started here (redis-server and redis-cli installed). Missing in CI:
 * throws, so the suite fails instead of skipping. Missing elsewhere: says so loudly.
 */
export function clusterAvailable(): boolean {
  if (!sharedRedisUrl()) return false;
  // REDIS_URL may name an external Redis: the cluster needs local binaries all the same.
  for (const bin of ['redis-server', 'redis-cli']) {
    const found = spawnSync(bin, ['--version'], { encoding: 'utf8' });
    if (found.error || found.status !== 0) {
      if (process.env.CI) throw new Error(`${bin} is required in CI for the Redis Cluster suites`);
      console.warn(`!!! ${bin} not found: this Redis Cluster suite is SKIPPED`);
      return false;
    }
  }
  return true;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A free port P whose cluster bus port P + 10000 is free too. */
async function clusterPort(taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const p = 20_000 + Math.floor(Math.random() * 25_000);
    if (taken.has(p) || taken.has(p + 10_000)) continue;
    if ((await portFree(p)) && (await portFree(p + 10_000))) {
      taken.add(p);
      taken.add(p + 10_000);
      return p;
    }
  }
  throw new Error('no free port pair for a cluster node');
}

/** `CLUSTER INFO` (section 'cluster-info') or an `INFO` section of the node on `port`. */
async function info(port: number, section: string): Promise<string> {
  const c = new Redis({
    port,
    host: '127.0.0.1',
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  c.on('error', () => undefined);
  try {
    await c.connect();
    return section === 'cluster-info' ? String(await c.cluster('INFO')) : await c.info(section);
  } finally {
    c.disconnect();
  }
}

/** Options of `OwnRedisCluster.start`. */
export interface OwnClusterOptions {
  /** @default 3 */
  masters?: number;
  /** Replicas per master. @default 0 */
  replicas?: number;
  /** `cluster-node-timeout` (ms): how soon a dead node is failed over. @default 1000 */
  nodeTimeoutMs?: number;
}

/**
 * A real Redis Cluster of the test's own on loopback: `masters` × (1 + `replicas`) redis-server
 * processes with `--cluster-enabled yes`, joined with `redis-cli --cluster create`. `kill(port)` crashes
 * one node (SIGKILL), `restart(port)` starts it again with its cluster config (it rejoins), `stop()`
 * kills every node and removes the temporary directory. `cluster-require-full-coverage no`: one dead
 * master stops only its own slots.
 */
export class OwnRedisCluster {
  private readonly children = new Map<number, ChildProcess>();
  private constructor(
    readonly ports: number[],
    private readonly dir: string,
    private readonly nodeTimeoutMs: number,
  ) {}

  /** `host:port` of every node. */
  get nodes(): string[] {
    return this.ports.map((p) => `127.0.0.1:${p}`);
  }

  /** `redis+cluster://` URL of every node. */
  get clusterUrl(): string {
    return `redis+cluster://${this.nodes.join(',')}`;
  }

  static async start(options: OwnClusterOptions = {}): Promise<OwnRedisCluster> {
    const masters = options.masters ?? 3;
    const replicas = options.replicas ?? 0;
    const taken = new Set<number>();
    const ports: number[] = [];
    for (let i = 0; i < masters * (1 + replicas); i++) ports.push(await clusterPort(taken));
    const c = new OwnRedisCluster(
      ports,
      mkdtempSync(join(tmpdir(), 'openai-cluster-')),
      options.nodeTimeoutMs ?? 1_000,
    );
    try {
      await Promise.all(ports.map((p) => c.restart(p)));
      const created = spawnSync(
        'redis-cli',
        ['--cluster', 'create', ...c.nodes, '--cluster-replicas', String(replicas), '--cluster-yes'],
        { encoding: 'utf8', timeout: 30_000 },
      );
      if (created.status !== 0)
        throw new Error(`redis-cli --cluster create failed: ${created.stdout}\n${created.stderr}`);
      await c.waitHealthy();
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  /** Waits until every running node says `cluster_state:ok` and every slot is assigned. */
  async waitHealthy(timeoutMs = 20_000): Promise<void> {
    await waitFor(
      'the Redis Cluster to be ok on every node',
      async () => {
        for (const p of this.children.keys()) {
          const i = await info(p, 'cluster-info');
          if (!/cluster_state:ok/.test(i) || !/cluster_slots_ok:16384/.test(i)) return false;
        }
        return true;
      },
      timeoutMs,
      50,
    );
  }

  /** Starts the node on `port` (again): it keeps its cluster config, so it rejoins with its role. */
  async restart(port: number): Promise<void> {
    if (this.children.has(port)) return;
    const child = spawn(
      'redis-server',
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--cluster-enabled',
        'yes',
        '--cluster-config-file',
        join(this.dir, `nodes-${port}.conf`),
        '--cluster-node-timeout',
        String(this.nodeTimeoutMs),
        '--cluster-require-full-coverage',
        'no',
        '--cluster-replica-validity-factor',
        '0',
        '--dir',
        this.dir,
        '--save',
        '',
        '--appendonly',
        'no',
      ],
      { stdio: 'ignore' },
    );
    this.children.set(port, child);
    child.once('exit', () => {
      if (this.children.get(port) === child) this.children.delete(port);
    });
    await waitFor(
      `cluster node on port ${port}`,
      async () => /cluster_enabled:1/.test(await info(port, 'cluster')),
      10_000,
      20,
    );
  }

  /** Crashes the node on `port` (SIGKILL) and waits for it to exit. */
  async kill(port: number): Promise<void> {
    const child = this.children.get(port);
    if (!child) return;
    this.children.delete(port);
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
  }

  /** Port of the master holding `slot`, asked of a running node (`CLUSTER SLOTS`). */
  async masterOfSlot(slot: number): Promise<number> {
    const port = [...this.children.keys()][0];
    const c = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0 });
    c.on('error', () => undefined);
    try {
      const ranges = (await c.cluster('SLOTS')) as unknown as Array<[number, number, [string, number]]>;
      const r = ranges.find(([from, to]) => slot >= from && slot <= to);
      if (!r) throw new Error(`slot ${slot} is not assigned`);
      return Number(r[2][1]);
    } finally {
      c.disconnect();
    }
  }

  /** Ports of the masters (nodes holding slots), asked of a running node. */
  async masterPorts(): Promise<number[]> {
    const port = [...this.children.keys()][0];
    const c = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 0 });
    c.on('error', () => undefined);
    try {
      const ranges = (await c.cluster('SLOTS')) as unknown as Array<[number, number, [string, number]]>;
      return [...new Set(ranges.map((r) => Number(r[2][1])))].sort((a, b) => a - b);
    } finally {
      c.disconnect();
    }
  }

  async stop(): Promise<void> {
    await Promise.all([...this.children.keys()].map((p) => this.kill(p)));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
