// The Portkey AI gateway (@portkey-ai/gateway, a devDependency of the bench) and the fake upstream,
// each in a process of its own, for section D of the bench: the same app routes the same call to the
// upstream directly (`/raw`), through the library (`/guarded`) and through the gateway (`/gateway`).
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

async function stop(child: ChildProcess, how: 'disconnect' | 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  if (how === 'disconnect' && child.connected) child.disconnect();
  else child.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 3_000))]);
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}

/** The zero-delay fake OpenAI server alone in a child process (`fake-upstream.js`). */
export class UpstreamProcess {
  private constructor(
    private readonly child: ChildProcess,
    readonly baseURL: string,
  ) {}
  static async start(): Promise<UpstreamProcess> {
    const child = fork(join(__dirname, 'fake-upstream.js'), [], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    const baseURL = await new Promise<string>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`fake upstream exited with code ${code}`)));
      child.on('message', (m: { baseURL?: string }) => m.baseURL && resolve(m.baseURL));
    });
    child.removeAllListeners('exit');
    return new UpstreamProcess(child, baseURL);
  }
  stop(): Promise<void> {
    return stop(this.child, 'disconnect');
  }
}

/** The installed gateway's version and its server script. */
export function gatewayPackage(): { version: string; script: string } {
  const require = createRequire(join(process.cwd(), 'package.json'));
  const pkgFile = require.resolve('@portkey-ai/gateway/package.json');
  const pkg = require(pkgFile) as { version: string; bin: string | Record<string, string> };
  const bin = typeof pkg.bin === 'string' ? pkg.bin : Object.values(pkg.bin)[0]!;
  return { version: pkg.version, script: join(dirname(pkgFile), bin) };
}

/**
 * The Portkey gateway on a loopback port (`--headless`: no console UI), run by the same Node as the
 * bench. Requests name the provider and the upstream with `x-portkey-provider: openai` and
 * `x-portkey-custom-host: <fake upstream>/v1`.
 */
export class GatewayProcess {
  private constructor(
    private readonly child: ChildProcess,
    readonly url: string,
    readonly version: string,
  ) {}
  static async start(): Promise<GatewayProcess> {
    const { version, script } = gatewayPackage();
    const port = await freePort();
    const child = spawn(process.execPath, [script, `--port=${port}`, '--headless'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, NODE_ENV: 'production' },
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null)
        throw new Error(`the Portkey gateway exited (${child.exitCode}): ${stderr}`);
      const up = await fetch(url).then(
        () => true,
        () => false,
      );
      if (up) break;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`the Portkey gateway did not listen on ${url} within 20 s: ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return new GatewayProcess(child, url, version);
  }
  stop(): Promise<void> {
    return stop(this.child, 'SIGTERM');
  }
}
