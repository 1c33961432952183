/**
 * The image's health check (`node dist/workers/healthcheck.js api|worker`), run inside the
 * container: exit 0 when healthy, 1 with the reason on stderr otherwise.
 * - `api`: `GET /healthz` on the API's port answers 200 (the store and Temporal answer).
 * - `worker`: the worker's `/metrics` (CLOUDGATE_WORKER_METRICS_PORT) answers 200 to the
 *   metrics token, and the Temporal SDK's part of it was readable.
 */
import { configFromEnv } from '../model/config.js';
import { loadMetricsToken, readFileVariables } from '../store/secret.js';

const TIMEOUT_MS = 4_000;

async function check(role: string | undefined): Promise<string | undefined> {
  readFileVariables(process.env);
  const config = configFromEnv(process.env);
  if (role === 'api') {
    const res = await fetch(`http://127.0.0.1:${config.apiPort}/healthz`, { signal: AbortSignal.timeout(TIMEOUT_MS) });
    return res.ok ? undefined : `GET /healthz answered ${res.status}: ${(await res.text()).slice(0, 500)}`;
  }
  if (role === 'worker') {
    if (config.metrics.workerPort === undefined) return 'CLOUDGATE_WORKER_METRICS_PORT is not set: the worker serves no /metrics to check';
    const res = await fetch(`http://127.0.0.1:${config.metrics.workerPort}/metrics`, {
      headers: { authorization: `Bearer ${loadMetricsToken(config)}` },
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    if (!res.ok) return `GET /metrics answered ${res.status}`;
    // 0: the SDK core's metrics (worker polling, task slots) could not be read.
    if (/^cloudgate_worker_sdk_metrics_up 0$/m.test(await res.text())) return 'the Temporal SDK metrics are not readable';
    return undefined;
  }
  return `usage: healthcheck api|worker (not ${role ?? 'nothing'})`;
}

check(process.argv[2]).then(
  (problem) => {
    if (problem) console.error(`unhealthy: ${problem}`);
    process.exit(problem ? 1 : 0);
  },
  (err: unknown) => {
    console.error(`unhealthy: ${(err as Error).message}`);
    process.exit(1);
  },
);
