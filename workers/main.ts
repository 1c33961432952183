/**
 * Worker process: `npm run worker` (and `npm start`, which runs it beside the API).
 * Reads the environment (README), runs until SIGINT/SIGTERM, then drains and exits.
 */
import { pino } from 'pino';
import { Runtime, makeTelemetryFilterString } from '@temporalio/worker';
import { configFromEnv } from '../model/config.js';
import { SimRulesSchema } from '../clouds/sim.js';
import { ensurePrivateDir } from '../store/private-files.js';
import { startWorker } from './worker.js';

const config = configFromEnv(process.env);
const logger = pino({ level: config.logLevel, base: { proc: 'worker' } });
ensurePrivateDir(config.dataDir);
type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
// The bundler's webpack report is build noise: keep it for debug.
const emit = (level: Level, message: string, meta?: Record<string, unknown>) =>
  logger[message.startsWith('asset workflow-bundle') ? 'debug' : level](meta ?? {}, message);
Runtime.install({
  logger: {
    log: (level, message, meta) => emit(level.toLowerCase() as Level, message, meta),
    trace: (m, meta) => emit('trace', m, meta),
    debug: (m, meta) => emit('debug', m, meta),
    info: (m, meta) => emit('info', m, meta),
    warn: (m, meta) => emit('warn', m, meta),
    error: (m, meta) => emit('error', m, meta),
  },
  telemetryOptions: { logging: { filter: makeTelemetryFilterString({ core: 'WARN' }), forward: {} } },
});

const simRules = process.env.SIM_RULES ? SimRulesSchema.parse(JSON.parse(process.env.SIM_RULES)) : undefined;
const running = await startWorker(config, { simRules, logger });
logger.info({ taskQueue: config.taskQueue, namespace: config.namespace }, 'worker running');
await running.done;
logger.info('worker stopped');
