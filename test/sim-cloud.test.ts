/**
 * The sim cloud's guests: they phone home over real HTTP like CernVM guests do, misbehave
 * on request, survive the adapter being closed and reopened, and keep up with a
 * 1,000-instance burst.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CloudError, type InstanceSpec } from '../clouds/contract.js';
import { PHONE_HOMES_IN_FLIGHT, SimRulesSchema, createSimCloud, type SimCloud, type SimCloudOptions } from '../clouds/sim.js';
import { NO_CONTEXT, renderContextUserData } from '../model/user-data.js';

interface Received {
  instanceId: string;
  auth: string | undefined;
  body: { status: string; checks: { cvmfs: Record<string, string>; message?: string } };
  at: number;
}

/** A stand-in for the gateway's phone-home endpoint: records reports, answers with `respond`. */
class Gateway {
  received: Received[] = [];
  sockets = new Set<unknown>();
  respond: (r: Received) => number = () => 204;
  private server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    this.sockets.add(req.socket);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r: Received = {
        instanceId: decodeURIComponent(req.url!.split('/').pop()!),
        auth: req.headers.authorization,
        body: JSON.parse(Buffer.concat(chunks).toString('utf8')),
        at: Date.now(),
      };
      this.received.push(r);
      res.statusCode = this.respond(r);
      res.end();
    });
  });
  url = '';

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
  reset(): void {
    this.received = [];
    this.sockets.clear();
    this.respond = () => 204;
  }
  for(id: string): Received[] {
    return this.received.filter((r) => r.instanceId === id);
  }
}

const gateway = new Gateway();
let dir: string;
const opened: SimCloud[] = [];
let fileNo = 0;

function open(o: Partial<SimCloudOptions> = {}): SimCloud {
  const sim = createSimCloud({
    file: path.join(dir, `sim-${fileNo}.sqlite`),
    bootMs: 100,
    readyDelayMs: 100,
    failureRate: 0,
    silentRate: 0,
    throttleRate: 0,
    seed: 'sim-test',
    tickMs: 20,
    ...o,
  });
  opened.push(sim);
  return sim;
}

const REPOS = ['sft.cern.ch', 'alice.cern.ch'];
function spec(key: string, cluster = 'c1', service = 'workers'): InstanceSpec {
  return {
    name: key,
    image: 'cernvm4',
    offering: { cpus: 1, memoryMiB: 2048, diskGiB: 20 },
    userData: renderContextUserData(NO_CONTEXT, { phoneHome: { url: `${gateway.url}/ready/${key}`, instanceId: key, token: `tok-${key}`, repositories: REPOS } }),
    tags: { cluster, service, key },
  };
}
const create = (sim: SimCloud, key: string, cluster?: string) => sim.createInstance(spec(key, cluster), key);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'cloudgate-sim-'));
  await gateway.listen();
});
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close();
  gateway.reset();
  fileNo++;
});
afterAll(async () => {
  await gateway.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('sim guests phone home', () => {
  it('an ok guest reports its CVMFS probe with its bearer token after boot + ready delay', async () => {
    const sim = open();
    sim.start();
    const t0 = Date.now();
    const inst = await create(sim, 'c1-workers-0');
    expect(inst).toMatchObject({ state: 'PENDING', name: 'c1-workers-0', idempotencyKey: 'c1-workers-0' });
    expect(inst.id).toMatch(/^sim-[0-9a-f]{12}$/);

    await until('phone-home', () => gateway.received.length === 1);
    const [r] = gateway.received;
    expect(r.instanceId).toBe('c1-workers-0');
    expect(r.auth).toBe('Bearer tok-c1-workers-0');
    expect(r.body).toEqual({
      status: 'ok',
      checks: {
        cvmfs: { 'sft.cern.ch': 'OK', 'alice.cern.ch': 'OK' },
        output: { 'sft.cern.ch': 'Probing /cvmfs/sft.cern.ch... OK', 'alice.cern.ch': 'Probing /cvmfs/alice.cern.ch... OK' },
      },
    });
    expect(r.at - t0).toBeGreaterThanOrEqual(200);
    expect((await sim.describeInstance(inst.id)).state).toBe('RUNNING');

    await sleep(200);
    expect(gateway.received).toHaveLength(1); // reported once, not on every tick
    expect((await sim.describeInstance(inst.id)).extra?.phoneHome).toMatchObject({ attempts: 1, result: '204' });
  });

  it('does not phone home for an instance terminated before it was ready', async () => {
    const sim = open();
    sim.start();
    const inst = await create(sim, 'c1-workers-0');
    await sim.terminateInstance(inst.id);
    await sleep(400);
    expect(gateway.received).toHaveLength(0);
    expect(sim.count()).toBe(0);
  });

  it('retries after a 5xx with at least a second of backoff, and gives up on a 4xx', async () => {
    const sim = open();
    sim.start();
    let calls = 0;
    gateway.respond = (r) => (r.instanceId === 'c1-workers-0' ? (++calls === 1 ? 503 : 204) : 401);
    await create(sim, 'c1-workers-0');
    await create(sim, 'c1-workers-1');
    await until('retry', () => gateway.for('c1-workers-0').length === 2, 10_000);
    const [first, second] = gateway.for('c1-workers-0');
    expect(second.at - first.at).toBeGreaterThanOrEqual(1000);
    await sleep(1500);
    expect(gateway.for('c1-workers-0')).toHaveLength(2);
    expect(gateway.for('c1-workers-1')).toHaveLength(1); // 401: the guest gives up
  });

  it('keeps retrying while the gateway is unreachable (network errors)', async () => {
    let attempts = 0;
    const sim = open({
      phoneHome: async () => {
        attempts++;
        throw new TypeError('fetch failed', { cause: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) });
      },
    });
    sim.start();
    const inst = await create(sim, 'c1-workers-0');
    await until('two attempts', () => attempts >= 2, 5_000);
    const extra = (await sim.describeInstance(inst.id)).extra as { phoneHome: { result: string } };
    expect(extra.phoneHome.result).toMatch(/ECONNREFUSED/);
  });
});

describe('sim rules and rates', () => {
  it('validates rules given as JSON', () => {
    const rules = SimRulesSchema.parse(JSON.parse('[{"match":"-head-","behaviour":"silent","limit":2}]'));
    expect(rules).toEqual([{ match: '-head-', behaviour: 'silent', limit: 2 }]);
    expect(SimRulesSchema.safeParse([{ match: '(', behaviour: 'ok' }]).success).toBe(false);
    expect(SimRulesSchema.safeParse([{ match: 'x', behaviour: 'explode' }]).success).toBe(false);
  });

  it("'fail' guests report a failed probe, only for the first N matching instances", async () => {
    const sim = open({ rules: [{ match: '-workers-', behaviour: 'fail', limit: 1 }] });
    sim.start();
    await create(sim, 'c1-workers-0');
    await create(sim, 'c1-workers-1');
    await until('two reports', () => gateway.received.length === 2);
    expect(gateway.for('c1-workers-0')[0].body).toEqual({
      status: 'failed',
      checks: {
        cvmfs: { 'sft.cern.ch': 'FAILED', 'alice.cern.ch': 'FAILED' },
        output: { 'sft.cern.ch': 'Probing /cvmfs/sft.cern.ch... Failed!', 'alice.cern.ch': 'Probing /cvmfs/alice.cern.ch... Failed!' },
        message: 'simulated probe failure',
      },
    });
    expect(gateway.for('c1-workers-1')[0].body.status).toBe('ok');
  });

  it('rule limits are counted across restarts', async () => {
    const rules = [{ match: '-workers-', behaviour: 'silent' as const, limit: 1 }];
    const first = open({ rules });
    await create(first, 'c1-workers-0');
    await first.close();
    const second = open({ rules });
    second.start();
    await create(second, 'c1-workers-1');
    await until('one report', () => gateway.received.length === 1);
    await sleep(300);
    expect(gateway.received.map((r) => r.instanceId)).toEqual(['c1-workers-1']);
  });

  it("'silent' guests boot but never report", async () => {
    const sim = open({ rules: [{ match: 'head', behaviour: 'silent' }] });
    sim.start();
    const head = await create(sim, 'c1-head-0');
    await create(sim, 'c1-workers-0');
    await until('worker report', () => gateway.received.length === 1);
    await sleep(300);
    expect(gateway.received.map((r) => r.instanceId)).toEqual(['c1-workers-0']);
    expect((await sim.describeInstance(head.id)).state).toBe('RUNNING');
  });

  it("'vanish' guests disappear right after boot, without phoning home", async () => {
    const sim = open({ rules: [{ match: 'workers', behaviour: 'vanish', limit: 2 }] });
    sim.start();
    const gone = [await create(sim, 'c1-workers-0'), await create(sim, 'c1-workers-1')];
    const stays = await create(sim, 'c1-workers-2');
    expect(sim.count({ cluster: 'c1' })).toBe(3);
    await until('vanish', () => sim.count({ cluster: 'c1' }) === 1);
    for (const g of gone) {
      await expect(sim.describeInstance(g.id)).rejects.toMatchObject({ kind: 'NotFound' });
      expect(await sim.findInstance(g.idempotencyKey!)).toBeUndefined();
    }
    expect((await sim.listInstances({ cluster: 'c1' })).map((i) => i.id)).toEqual([stays.id]);
    await until('report', () => gateway.received.length === 1);
    await sleep(200);
    expect(gateway.received.map((r) => r.instanceId)).toEqual(['c1-workers-2']);
    // A create with a vanished instance's key makes a fresh instance (a limit-2 rule is used up).
    const again = await create(sim, 'c1-workers-0');
    expect(again.id).not.toBe(gone[0].id);
  });

  it('vanish() makes an instance disappear', async () => {
    const sim = open();
    const inst = await create(sim, 'c1-workers-0');
    sim.vanish(inst.id);
    expect(sim.count()).toBe(0);
    await expect(sim.describeInstance(inst.id)).rejects.toBeInstanceOf(CloudError);
    await sim.terminateInstance(inst.id); // terminating a gone instance succeeds
  });

  it('decides guests and throttling deterministically from the seed', async () => {
    const decide = async () => {
      const sim = open({ failureRate: 0.3, silentRate: 0.3, throttleRate: 0.5 });
      const throttled: boolean[] = [];
      for (let i = 0; i < 40; i++) {
        try {
          await create(sim, `c1-workers-${i}`);
          throttled.push(false);
        } catch (err) {
          expect(err).toMatchObject({ kind: 'Throttled' });
          throttled.push(true);
        }
      }
      const guests = (await sim.listInstances({})).map((i) => `${i.name}:${String(i.extra?.guest)}`).sort();
      fileNo++;
      return { throttled, guests };
    };
    const a = await decide();
    const b = await decide();
    expect(b).toEqual(a);
    expect(a.throttled).toContain(true);
    expect(a.throttled).toContain(false);
    const kinds = new Set(a.guests.map((g) => g.split(':')[1]));
    expect([...kinds].sort()).toEqual(['fail', 'ok', 'silent']);
  });
});

describe('sim state is durable', () => {
  it('keeps instances and delivers a pending phone-home after close and reopen', async () => {
    const first = open({ readyDelayMs: 300 });
    first.start();
    const inst = await create(first, 'c1-workers-0', 'durable');
    await create(first, 'c1-workers-1', 'durable');
    await first.terminateInstance((await first.findInstance('c1-workers-1'))!.id);
    await first.close();
    expect(gateway.received).toHaveLength(0);

    const second = open({ readyDelayMs: 300 });
    expect(second.count({ cluster: 'durable' })).toBe(1);
    expect((await second.findInstance('c1-workers-0'))?.id).toBe(inst.id);
    expect((await second.createInstance(spec('c1-workers-0', 'durable'), 'c1-workers-0')).id).toBe(inst.id);
    second.start();
    await until('phone-home after reopen', () => gateway.received.length === 1);
    expect(gateway.received[0].instanceId).toBe('c1-workers-0');
    await sleep(200);
    expect(gateway.received).toHaveLength(1);
  });
});

describe('two processes on one state file', () => {
  it('each guest phones home once, whichever ticker claims it; a stopped ticker leaves its unsent claims to the other', async () => {
    // Two opens of one file stand for the topology's two workers (each its own connection and ticker).
    const file = path.join(dir, 'shared.sqlite');
    const a = open({ file, bootMs: 50, readyDelayMs: 50 });
    const b = open({ file, bootMs: 50, readyDelayMs: 50 });
    a.start();
    b.start();
    const keys = Array.from({ length: 300 }, (_, i) => `shared-${i}`);
    await Promise.all(keys.map((k, i) => create(i % 2 ? a : b, k, 'shared')));
    await until('300 phone-homes', () => keys.every((k) => gateway.for(k).length > 0), 20_000);
    await sleep(300); // a second send would come within a few ticks
    expect(keys.filter((k) => gateway.for(k).length !== 1)).toEqual([]);

    // `c` claims more than it keeps in flight (its sends held), and stops: `b` sends the rest.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const sentByC: string[] = [];
    const c = open({ file, bootMs: 50, readyDelayMs: 50, phoneHome: async (url) => (sentByC.push(url.split('/').pop()!), await held, 204) });
    await b.stop();
    await a.stop();
    c.start();
    const later = Array.from({ length: PHONE_HOMES_IN_FLIGHT + 88 }, (_, i) => `shared-late-${i}`);
    await Promise.all(later.map((k) => create(c, k, 'shared')));
    await until('c to have its phone-homes in flight', () => sentByC.length === PHONE_HOMES_IN_FLIGHT);
    await sleep(200);
    const stopping = c.stop();
    release();
    await stopping;
    b.start();
    // Those c claimed and never sent are due again at once, not after the claim runs out (15 s).
    const sent = (k: string) => gateway.for(k).length + sentByC.filter((x) => x === k).length;
    await until('the rest of the phone-homes', () => later.every((k) => sent(k) > 0), 5_000);
    await sleep(300);
    expect(later.filter((k) => sent(k) !== 1)).toEqual([]);
    expect(sentByC).toHaveLength(PHONE_HOMES_IN_FLIGHT);
    await b.stop();
  });
});

describe('sim state survives kill -9', () => {
  it('a process killed mid-burst leaves every instance it reported, and a restart does not duplicate them', async () => {
    const file = path.join(dir, 'killed.sqlite');
    const simModule = new URL('../clouds/sim.js', import.meta.url).href;
    const child = path.join(dir, 'child.mts');
    // The child creates instances without pause and reports progress until it is killed.
    writeFileSync(
      child,
      `import { createSimCloud } from ${JSON.stringify(simModule)};
const sim = createSimCloud({ file: ${JSON.stringify(file)}, bootMs: 60000, readyDelayMs: 0, failureRate: 0, silentRate: 0, throttleRate: 0, seed: 'k' });
sim.start();
for (let i = 0; ; i++) {
  const key = 'k-w-' + i;
  await sim.createInstance({ name: key, image: 'cernvm', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 1 }, userData: '', tags: { cluster: 'killed', service: 'w', key } }, key);
  if (i % 50 === 49) process.stdout.write('created ' + (i + 1) + '\\n');
  if (i % 10 === 0) await new Promise((r) => setImmediate(r));
}
`,
    );
    const proc = spawn(process.execPath, ['--import', 'tsx', child], { stdio: ['ignore', 'pipe', 'inherit'] });
    let reported = 0;
    await new Promise<void>((resolve, reject) => {
      proc.on('error', reject);
      proc.on('exit', (code) => reject(new Error(`child exited early (${code})`)));
      proc.stdout!.on('data', (d: Buffer) => {
        const m = /created (\d+)\n$/.exec(d.toString());
        if (m) reported = Number(m[1]);
        if (reported >= 500) resolve();
      });
    });
    proc.removeAllListeners('exit');
    const exited = new Promise((r) => proc.on('exit', r));
    proc.kill('SIGKILL');
    await exited;

    const sim = open({ file, bootMs: 60000, seed: 'k' });
    const survived = sim.count({ cluster: 'killed' });
    expect(survived).toBeGreaterThanOrEqual(reported);
    const again = await Promise.all(
      Array.from({ length: reported }, (_, i) => sim.createInstance({ ...spec(`k-w-${i}`, 'killed'), userData: '' }, `k-w-${i}`)),
    );
    expect(new Set(again.map((a) => a.id)).size).toBe(reported);
    expect(sim.count({ cluster: 'killed' })).toBe(survived);
  });
});

describe('sim creates asked together (one transaction a turn)', () => {
  it('a cloud with room for 5 makes 5 of 8 and refuses the rest as full; a key asked twice gets one instance', async () => {
    const sim = open({ capacity: 5 });
    const keys = ['t-0', 't-1', 't-0', 't-2', 't-3', 't-4', 't-5', 't-6', 't-7'];
    const answers = await Promise.allSettled(keys.map((k) => create(sim, k, 'together')));
    const made = answers.flatMap((a, i) => (a.status === 'fulfilled' ? [{ key: keys[i], id: a.value.id }] : []));
    const refused = answers.flatMap((a) => (a.status === 'rejected' ? [a.reason as CloudError] : []));
    expect(made.map((m) => m.key)).toEqual(['t-0', 't-1', 't-0', 't-2', 't-3', 't-4']);
    expect(made[2].id).toBe(made[0].id);
    expect(refused.map((e) => e.kind)).toEqual(['CapacityExhausted', 'CapacityExhausted', 'CapacityExhausted']);
    expect(refused[0].message).toContain('5 of 5 instances live');
    expect(sim.count({ cluster: 'together' })).toBe(5);
    expect((await sim.findInstance('t-0'))?.id).toBe(made[0].id);
  });
});

describe('sim at scale', () => {
  it('creates 1,000 instances quickly and all 1,000 phone home', async () => {
    const sim = open({ bootMs: 200, readyDelayMs: 100 });
    sim.start();
    const keys = Array.from({ length: 1000 }, (_, i) => `big-workers-${i}`);
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    const made = await Promise.all(keys.map((k) => create(sim, k, 'big')));
    const createMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    expect(new Set(made.map((m) => m.id)).size).toBe(1000);
    expect(sim.count({ cluster: 'big' })).toBe(1000);

    await until('1,000 phone-homes', () => gateway.received.length >= 1000, 60_000);
    const allMs = performance.now() - t0;
    const firstAt = Math.min(...gateway.received.map((r) => r.at));
    const lastAt = Math.max(...gateway.received.map((r) => r.at));
    console.log(
      `sim 1,000 instances: creates ${createMs.toFixed(0)} ms wall, ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms CPU; ` +
        `all phoned home ${allMs.toFixed(0)} ms after the first create (boot 200 + ready 100 ms); ` +
        `first→last phone-home ${lastAt - firstAt} ms over ${gateway.sockets.size} connections`,
    );
    expect(new Set(gateway.received.map((r) => r.instanceId)).size).toBe(1000);
    expect(gateway.sockets.size).toBeLessThanOrEqual(PHONE_HOMES_IN_FLIGHT); // keep-alive, bounded concurrency
    expect((await sim.listInstances({ cluster: 'big' })).length).toBe(1000);
  });
});
