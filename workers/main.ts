/**
 * Worker process: `npm run worker` (and `npm start`, which runs it beside the API).
 * Reads the environment (README), runs until SIGINT/SIGTERM, then drains and exits.
 */
import { mkdirSync } from 'node:fs';
import { pino } from 'pino';
import { Runtime, makeTelemetryFilterString } from '@temporalio/worker';
import { configFromEnv } from '../model/config.js';
import { SimRulesSchema } from '../clouds/sim.js';
import { startWorker } from './worker.js';

const config = configFromEnv(process.env);
const logger = pino({ level: config.logLevel, base: { proc: 'worker' } });
mkdirSync(config.dataDir, { recursive: true });
Runtime.install({
  logger: {
    log: (level, message, meta) => logger[level === 'TRACE' ? 'trace' : (level.toLowerCase() as 'info')]({ ...meta }, message),
    trace: (m, meta) => logger.trace(meta ?? {}, m),
    debug: (m, meta) => logger.debug(meta ?? {}, m),
    info: (m, meta) => logger.info(meta ?? {}, m),
    warn: (m, meta) => logger.warn(meta ?? {}, m),
    error: (m, meta) => logger.error(meta ?? {}, m),
  },
  telemetryOptions: { logging: { filter: makeTelemetryFilterString({ core: 'WARN' }), forward: {} } },
});

const simRules = process.env.SIM_RULES ? SimRulesSchema.parse(JSON.parse(process.env.SIM_RULES)) : undefined;
const running = await startWorker(config, { simRules, logger });
logger.info({ taskQueue: config.taskQueue, namespace: config.namespace }, 'worker running');
await running.done;
logger.info('worker stopped');
