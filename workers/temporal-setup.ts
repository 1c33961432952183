/**
 * `node dist/workers/temporal-setup.js`: readies a Temporal server for cloudgate once its
 * schema is in place — the namespace (`TEMPORAL_NAMESPACE`, default `default`, retention
 * `TEMPORAL_NAMESPACE_RETENTION_DAYS`, default 7) and cloudgate's search attributes — and
 * exits. Idempotent: docker-compose.yml runs it before every start of the API and the workers.
 * It waits for the frontend (up to `TEMPORAL_SETUP_TIMEOUT_SECONDS`, default 180), since a
 * server that just started takes a while to answer.
 */
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common';
import { configFromEnv, temporalAddressOf } from '../model/config.js';
import { ensureSearchAttributes } from './dev-server.js';

const config = configFromEnv(process.env);
const address = temporalAddressOf(config);
const namespace = config.namespace;
const retentionDays = Number(process.env.TEMPORAL_NAMESPACE_RETENTION_DAYS ?? 7);
const timeoutMs = Number(process.env.TEMPORAL_SETUP_TIMEOUT_SECONDS ?? 180) * 1000;
if (!(retentionDays >= 1)) throw new Error('TEMPORAL_NAMESPACE_RETENTION_DAYS must be a number of days, at least 1');
const say = (msg: string) => console.log(`[temporal-setup] ${msg}`);
const deadline = Date.now() + timeoutMs;

/** Retries `step` until it succeeds or the deadline passes (then throws its last error). */
async function retry<T>(what: string, step: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await step();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: no success within ${timeoutMs / 1000} s`, { cause: err });
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

const connection = await retry(`connecting to Temporal at ${address}`, async () => {
  const c = await Connection.connect({ address, connectTimeout: 2000 });
  try {
    await c.workflowService.getSystemInfo({});
    return c;
  } catch (err) {
    await c.close();
    throw err;
  }
});
try {
  await retry(`registering the namespace ${namespace}`, async () => {
    try {
      await connection.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs(`${retentionDays} days`) });
      say(`registered the namespace ${namespace} (retention ${retentionDays} days)`);
    } catch (err) {
      if ((err as { code?: number }).code !== 6) throw err; // ALREADY_EXISTS: a later start
    }
  });
  // A new namespace takes a moment to reach every service; the attributes need it.
  await retry(`adding cloudgate's search attributes to ${namespace}`, async () => {
    await connection.workflowService.describeNamespace({ namespace });
    await ensureSearchAttributes(connection, namespace);
  });
  say(`Temporal at ${address} is ready for cloudgate (namespace ${namespace}, search attributes in place)`);
} finally {
  await connection.close();
}
