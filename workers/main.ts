/**
 * Worker process: `npm run worker` (and `npm start`, which runs it beside the API).
 * Reads the environment (README), runs until SIGINT/SIGTERM, then drains and exits.
 */
import os from 'node:os';
import { pino } from 'pino';
import { Runtime, makeTelemetryFilterString, type TelemetryOptions } from '@temporalio/worker';
import { configFromEnv } from '../model/config.js';
import { SimRulesSchema } from '../clouds/sim.js';
import { ensurePrivateDir } from '../store/private-files.js';
import { readFileVariables } from '../store/secret.js';
import { idsOfWorkflowId } from '../workflows/messages.js';
import { freePort } from './dev-server.js';
import { startWorker } from './worker.js';

// `CLOUDGATE_…_FILE` (compose secrets) into the variables everything below reads.
readFileVariables(process.env);
const config = configFromEnv(process.env);
// `proc` tells the worker's lines from the API's wherever they meet (a shared collector, one terminal).
const logger = pino({ level: config.logLevel, base: { proc: 'worker', pid: process.pid, hostname: os.hostname() } });
ensurePrivateDir(config.dataDir);
type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
/**
 * Every SDK, workflow and activity line carries its `workflowId`; the cluster and service it
 * names go beside it (`clusterId`, `service`), so one cluster's lines are found by a field
 * whatever wrote them. The activity's task token is left out: it completes the activity.
 */
const emit = (level: Level, message: string, meta?: Record<string, unknown>) => {
  const { taskToken: _taskToken, ...rest } = meta ?? {};
  const ids = typeof rest.workflowId === 'string' ? idsOfWorkflowId(rest.workflowId) : {};
  // The bundler's webpack report is build noise: keep it for debug.
  logger[message.startsWith('asset workflow-bundle') ? 'debug' : level]({ ...rest, ...ids }, message);
};

/**
 * With `/metrics` on (`CLOUDGATE_WORKER_METRICS_PORT`), the SDK core serves its own worker
 * metrics on a free loopback port, which the worker's `/metrics` reads and appends
 * (workers/metrics.ts). Named as Prometheus and Temporal's dashboards expect them: seconds,
 * unit suffixes, `_total` on counters (`temporal_activity_execution_latency_seconds`,
 * `temporal_workflow_completed_total`).
 */
let sdkMetricsUrl: string | undefined;
let metrics: TelemetryOptions['metrics'];
if (config.metrics.workerPort !== undefined) {
  const bindAddress = `127.0.0.1:${await freePort()}`;
  sdkMetricsUrl = `http://${bindAddress}/metrics`;
  metrics = { prometheus: { bindAddress, countersTotalSuffix: true, unitSuffix: true, useSecondsForDurations: true } };
}
Runtime.install({
  logger: {
    log: (level, message, meta) => emit(level.toLowerCase() as Level, message, meta),
    trace: (m, meta) => emit('trace', m, meta),
    debug: (m, meta) => emit('debug', m, meta),
    info: (m, meta) => emit('info', m, meta),
    warn: (m, meta) => emit('warn', m, meta),
    error: (m, meta) => emit('error', m, meta),
  },
  telemetryOptions: { logging: { filter: makeTelemetryFilterString({ core: 'WARN' }), forward: {} }, ...(metrics && { metrics }) },
});

const simRules = process.env.SIM_RULES ? SimRulesSchema.parse(JSON.parse(process.env.SIM_RULES)) : undefined;
const running = await startWorker(config, { simRules, logger, sdkMetricsUrl });
logger.info({ taskQueue: config.taskQueue, namespace: config.namespace, metrics: running.metricsUrl }, 'worker running');
await running.done;
logger.info('worker stopped');
