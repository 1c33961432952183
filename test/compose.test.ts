/**
 * docker-compose.yml for real: Debian's Docker daemon (test/peers/docker.ts, private to this
 * suite) builds cloudgate's image from the Dockerfile, docker-compose (Debian 12's 1.29.2)
 * brings the production topology up — PostgreSQL, the schema one-shot, the Temporal server on
 * PostgreSQL, the namespace one-shot, two API replicas, two worker replicas, Prometheus — and a
 * user's round trip goes through the published API ports: a cluster on the sim cloud comes up
 * READY and is deleted to TERMINATED, with requests spread over both replicas. Prometheus
 * (with docs/prometheus.yml) must see all four cloudgate targets up and hold samples of a
 * cloudgate metric from each job. Then `docker-compose down -v`.
 *
 * No image registry is reachable here, so every image but cloudgate's own is a local stand-in
 * (test/docker/*.Dockerfile say for what); the compose file takes their names from variables.
 * The Temporal UI service is not started: neither its public image nor its source can be had
 * on this machine (README, "Production with Docker Compose"); `docker-compose config` checks
 * its wiring only. Prints the image build times (first and repeated) and up-to-READY.
 */
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { parse as parseYaml } from 'yaml';
import { ROOT, threeTier, waitFor } from './harness.js';
import { buildTestImages, run, startDockerDaemon, type DockerDaemon, type TestImages } from './peers/docker.js';

const CLOUDGATE_IMAGE = 'cloudgate-test/cloudgate:test';
/** Every service but the Temporal UI (see above). */
const SERVICES = ['postgres', 'temporal-schema', 'temporal', 'temporal-setup', 'api', 'worker', 'prometheus'];
const PROJECT = `cgtest${process.pid}`;
const say = (msg: string) => console.log(`[compose] ${msg}`);
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

let daemon: DockerDaemon;
let images: TestImages;
let secretsDir: string;
let composeEnv: NodeJS.ProcessEnv;
let upStarted = 0;
const timings: Record<string, string> = {};
/** Tests that got to their end: fewer than all, and afterAll prints the containers' logs. */
let passed = 0;
const TESTS = 4;

/** `docker-compose` (Debian 12 has no compose plugin for the docker client) on this project, against the private daemon. */
const compose = (args: string[], opts: { log?: string; allowFail?: boolean } = {}) =>
  run('docker-compose', ['--project-name', PROJECT, '--file', path.join(ROOT, 'docker-compose.yml'), ...args], { env: composeEnv, ...opts });

/** The host ports the replicas of `service` publish `port` on (`docker-compose port --index`). */
async function publishedPorts(service: string, port: number, replicas: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 1; i <= replicas; i++) {
    const { stdout } = await compose(['port', '--index', String(i), service, String(port)]);
    const hostPort = stdout.trim();
    if (!/^127\.0\.0\.1:\d+$/.test(hostPort)) throw new Error(`${service} #${i} publishes ${port} on "${hostPort}", not on 127.0.0.1`);
    out.push(`http://${hostPort}`);
  }
  return out;
}

/** The health of each container of `service` (`docker inspect`), e.g. `['healthy', 'starting']`. */
async function health(service: string): Promise<string[]> {
  const ids = (await compose(['ps', '-q', service])).stdout.split('\n').filter(Boolean);
  if (ids.length === 0) return [];
  const { stdout } = await daemon.docker(['inspect', '--format', '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}', ...ids]);
  return stdout.split('\n').filter(Boolean);
}

describe('docker-compose.yml: the production topology in containers', () => {
  let apis: string[] = [];
  let adminToken = '';
  let calls = 0;
  /** Calls the API as the admin, alternating between the replicas. */
  const http = async (method: string, url: string, body?: unknown): Promise<{ status: number; body: any }> => {
    const base = apis[calls++ % apis.length];
    const res = await fetch(`${base}${url}`, {
      method,
      headers: { authorization: `Bearer ${adminToken}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : undefined };
  };

  beforeAll(async () => {
    daemon = await startDockerDaemon();
    const t0 = Date.now();
    images = await buildTestImages(daemon, say);
    timings['stand-in images'] = seconds(Date.now() - t0);

    // cloudgate's image from the Dockerfile, as `docker compose build` would (the compose file's
    // build args), plus this machine's CA bundle for npm (an inspecting proxy signs the registry's certificate).
    const existed = (await daemon.docker(['image', 'inspect', CLOUDGATE_IMAGE], { allowFail: true })).code === 0;
    const ca = [process.env.SSL_CERT_FILE, '/etc/ssl/certs/ca-certificates.crt'].find((f) => f && existsSync(f));
    const buildArgs = [
      'build', '--progress=plain',
      '--build-arg', `NODE_IMAGE=${images.node}`,
      '--build-arg', `NODE_RUNTIME_IMAGE=${images.node}`,
      ...(ca ? ['--secret', `id=ca-certificates,src=${ca}`] : []),
      '-t', CLOUDGATE_IMAGE, ROOT,
    ];
    // The first build is cold only on a fresh daemon (no image, no build cache); the second reuses every layer.
    for (const [i, label] of [existed ? 'first build (image there from an earlier run)' : 'first build (no image before)', 'repeated build'].entries()) {
      const b0 = Date.now();
      await daemon.docker(buildArgs, { env: { DOCKER_BUILDKIT: '1' }, log: `build-cloudgate-${i}.log` });
      timings[`cloudgate image, ${label}`] = seconds(Date.now() - b0);
    }

    // The secrets, as the README has a site make them: files only the containers' users read.
    secretsDir = mkdtempSync(path.join(os.tmpdir(), 'cg-compose-secrets-'));
    const secret = (name: string, value: string) => {
      writeFileSync(path.join(secretsDir, name), `${value}\n`);
      chmodSync(path.join(secretsDir, name), 0o444);
    };
    const postgresPassword = randomBytes(24).toString('hex');
    secret('postgres-password', postgresPassword);
    secret('cloudgate-database-url', `postgres://temporal:${postgresPassword}@postgres:5432/cloudgate`);
    secret('cloudgate-token-secret', randomBytes(32).toString('hex'));
    secret('cloudgate-secrets-key', randomBytes(32).toString('hex'));
    secret('cloudgate-payload-keys', `k1:${randomBytes(32).toString('hex')}`);
    secret('cloudgate-metrics-token', `cgm_${randomBytes(32).toString('base64url')}`);
    chmodSync(secretsDir, 0o700);

    composeEnv = {
      ...daemon.env,
      CLOUDGATE_IMAGE,
      POSTGRES_IMAGE: images.postgres,
      TEMPORAL_ADMIN_TOOLS_IMAGE: images.temporal,
      TEMPORAL_SERVER_IMAGE: images.temporal,
      PROMETHEUS_IMAGE: images.prometheus,
      CLOUDGATE_SECRETS_DIR: secretsDir,
      // Any free loopback port (other suites and helpers share this machine).
      CLOUDGATE_API_PUBLISH: '127.0.0.1:',
      TEMPORAL_PUBLISH: '127.0.0.1:',
      TEMPORAL_UI_PUBLISH: '127.0.0.1:',
      PROMETHEUS_PUBLISH: '127.0.0.1:',
      SIM_BOOT_MS: '2000',
      SIM_READY_DELAY_MS: '1000',
    };
    upStarted = Date.now();
    // Waits for each dependency's condition (healthy, completed) before starting what depends on it.
    await compose(['up', '--detach', '--no-build', ...SERVICES], { log: 'compose-up.log' });
    timings['docker-compose up'] = seconds(Date.now() - upStarted);
    await waitFor(
      async () => {
        const [a, w] = [await health('api'), await health('worker')];
        return a.length === 2 && w.length === 2 && [...a, ...w].every((s) => s === 'healthy');
      },
      180_000,
      'two healthy API and two healthy worker containers',
    );
    timings['up to all healthy'] = seconds(Date.now() - upStarted);
    apis = await publishedPorts('api', 8080, 2);
    adminToken = (await compose(['exec', '-T', '--index', '1', 'api', 'cat', '/data/admin-token'])).stdout.trim();
  }, 45 * 60_000);

  afterAll(async () => {
    if (composeEnv) {
      if (passed < TESTS || process.env.CLOUDGATE_COMPOSE_LOGS) {
        const logs = await compose(['logs', '--no-color', '--tail', '60'], { allowFail: true });
        console.log(`[compose] logs:\n${logs.stdout.slice(-20_000)}`);
      }
      await compose(['down', '--volumes', '--remove-orphans', '--timeout', '20'], { allowFail: true });
    }
    if (secretsDir) rmSync(secretsDir, { recursive: true, force: true });
    await daemon?.stop();
    say(Object.entries(timings).map(([k, v]) => `${k}: ${v}`).join('; '));
  }, 5 * 60_000);

  it('runs every service it started, each replica on its own loopback port', async () => {
    expect(await health('postgres')).toEqual(['healthy']);
    expect(await health('temporal')).toEqual(['running']);
    // The one-shots finished successfully (docker-compose up waited for that before starting the rest).
    for (const oneShot of ['temporal-schema', 'temporal-setup']) {
      const ids = (await compose(['ps', '-q', oneShot])).stdout.split('\n').filter(Boolean);
      const { stdout } = await daemon.docker(['inspect', '--format', '{{.State.Status}} {{.State.ExitCode}}', ...ids]);
      expect(stdout.trim()).toBe('exited 0');
    }
    expect(new Set(apis).size).toBe(2);
    for (const base of apis) {
      const res = await fetch(`${base}/healthz`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ status: 'ok', checks: { store: 'ok', temporal: 'ok' } });
      // The web portal is in the image too (built at image build time).
      const page = await fetch(`${base}/`);
      expect([page.status, page.headers.get('content-type')]).toEqual([200, expect.stringMatching(/^text\/html/)]);
    }
    // Non-root, compiled JavaScript (not tsx), the prebuilt workflow bundle.
    const ps = (await compose(['exec', '-T', '--index', '1', 'worker', 'sh', '-c', 'id -u; cat /proc/1/cmdline | tr "\\0" " "; echo; echo "$CLOUDGATE_WORKFLOW_BUNDLE"'])).stdout.split('\n');
    expect(ps[0]).toBe('10001');
    expect(ps[1].trim()).toBe('node dist/workers/main.js');
    expect(ps[2]).toBe('/app/dist/workflow-bundle.js');
    passed++;
  });

  it('takes a cluster on the sim cloud to READY and back to TERMINATED through both API replicas', async () => {
    const def = threeTier({ proxy: 1, head: 1, workers: 2 });
    const d = await http('POST', '/v1/cluster-definitions', def);
    expect(d.status).toBe(201);
    const c = await http('POST', '/v1/clusters', { definitionId: d.body.id });
    expect(c.status).toBe(202);
    const id = c.body.id as string;
    const created = Date.now();
    const ready = await waitFor(
      async () => {
        const s = await http('GET', `/v1/clusters/${id}`);
        return s.body?.state === 'READY' ? s.body : undefined;
      },
      240_000,
      `cluster ${id} READY`,
    );
    timings['up to READY'] = seconds(Date.now() - upStarted);
    timings['cluster created to READY'] = seconds(Date.now() - created);
    expect(ready.services.map((s: { name: string; ready: number }) => [s.name, s.ready])).toEqual([
      ['proxy', 1],
      ['head', 1],
      ['workers', 2],
    ]);
    const del = await http('DELETE', `/v1/clusters/${id}`);
    expect(del.status).toBe(202);
    const done = await waitFor(
      async () => {
        const s = await http('GET', `/v1/clusters/${id}`);
        return s.body?.state === 'TERMINATED' ? s.body : undefined;
      },
      180_000,
      `cluster ${id} TERMINATED`,
    );
    expect(done.services.every((s: { state: string }) => s.state === 'TERMINATED')).toBe(true);
    expect(calls).toBeGreaterThan(4); // both replicas answered (alternating)
    // The replicas share the store in PostgreSQL (the `cloudgate` database), not a file of their own.
    const row = await compose(['exec', '-T', 'postgres', 'psql', '-U', 'temporal', '-d', 'cloudgate', '-Atc', `SELECT id FROM clusters WHERE id = '${id}'`]);
    expect(row.stdout.trim()).toBe(id);
    const files = await compose(['exec', '-T', '--index', '1', 'api', 'sh', '-c', 'ls /data']);
    expect(files.stdout).not.toMatch(/cloudgate\.sqlite/);
    passed++;
  });

  it('has Prometheus scrape every API and worker replica with the metrics token', async () => {
    const [prom] = await publishedPorts('prometheus', 9090, 1);
    const query = async (q: string) => {
      const res = await fetch(`${prom}/api/v1/query?query=${encodeURIComponent(q)}`);
      const body = (await res.json()) as { status: string; data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
      expect(body.status).toBe('success');
      return body.data.result;
    };
    // Every target of both jobs up (docs/prometheus.yml: 15 s scrape interval).
    const targets = await waitFor(
      async () => {
        const res = await fetch(`${prom}/api/v1/targets?state=active`);
        const body = (await res.json()) as { data: { activeTargets: Array<{ labels: Record<string, string>; health: string; lastError: string }> } };
        const mine = body.data.activeTargets.filter((t) => t.labels.job.startsWith('cloudgate-'));
        return mine.length === 4 && mine.every((t) => t.health === 'up') ? mine : undefined;
      },
      120_000,
      'four cloudgate targets up in Prometheus',
    );
    expect(targets.map((t) => t.labels.job).sort()).toEqual(['cloudgate-api', 'cloudgate-api', 'cloudgate-worker', 'cloudgate-worker']);
    // Samples of cloudgate's own metrics from both jobs: the API's request durations, the workers' creates on sim.
    const requests = await waitFor(async () => {
      const r = await query('sum by (job) (cloudgate_http_request_duration_seconds_count)');
      return r.length > 0 && Number(r[0].value[1]) > 0 ? r : undefined;
    }, 60_000, 'API request samples in Prometheus');
    expect(requests[0].metric.job).toBe('cloudgate-api');
    const creates = await waitFor(async () => {
      const r = await query('sum by (job, cloud) (cloudgate_instance_creates_total)');
      return r.length > 0 && Number(r[0].value[1]) >= 4 ? r : undefined;
    }, 60_000, 'worker create samples in Prometheus');
    expect(creates[0].metric).toMatchObject({ job: 'cloudgate-worker', cloud: 'sim' });
    passed++;
  });

  it('wires the Temporal UI it does not start (public image only) to the server and the codec endpoint', async () => {
    const config = parseYaml((await compose(['config'])).stdout) as { services: Record<string, { image: string; environment: Record<string, string> }> };
    expect(config.services['temporal-ui'].image).toMatch(/^temporalio\/ui:/);
    expect(config.services['temporal-ui'].environment).toMatchObject({ TEMPORAL_ADDRESS: 'temporal:7233', TEMPORAL_CODEC_ENDPOINT: expect.stringMatching(/\/codec$/) });
    passed++;
  });
});
