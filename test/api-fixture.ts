/**
 * The API built in-process against a real Temporal dev server and no worker, as the supertest
 * suites use it; and supertest as an admin: every route but the public ones needs a bearer
 * (api/auth.ts). One admin API token per store, issued when the fixture opens it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import supertest from 'supertest';
import type { App } from 'supertest/types.js';
import { createApp, type ApiConfig, type AppDeps, type CloudgateApp } from '../api/app.js';
import type { Store } from '../store/index.js';
import { startDevServer, type DevServer } from '../workers/dev-server.js';

const tokens = new WeakMap<Store, string>();

/** The admin token of `store` (owner `admin`), created by {@link ApiFixture.start}. */
export function adminToken(store: Store): string {
  const token = tokens.get(store);
  if (!token) throw new Error('no admin token for this store: open it with ApiFixture.start');
  return token;
}

/** `supertest(app)` with `Authorization: Bearer <admin token>` on every request (a test may set another). */
export const asAdmin = (app: App, store: Store) => supertest.agent(app).set('Authorization', `Bearer ${adminToken(store)}`);

/**
 * A temporary folder (`dir`, there at once), then on {@link start} a dev server, a client, a
 * store and the app; {@link stop} closes them in reverse and removes the folder.
 */
export class ApiFixture {
  readonly dir: string;
  readonly config: ApiConfig;
  server!: DevServer;
  connection!: Connection;
  temporal!: Client;
  store!: Store;
  app!: CloudgateApp;

  /** `name` names the folder and the task queue (nothing polls it: every answer is given with no worker). */
  constructor(name: string, config: Partial<ApiConfig> = {}) {
    this.dir = mkdtempSync(path.join(tmpdir(), `cloudgate-${name}-`));
    this.config = {
      publicUrl: 'http://127.0.0.1:8080',
      temporalUiUrl: 'http://127.0.0.1:8233',
      namespace: 'default',
      taskQueue: `cloudgate-${name}-test`,
      tokenSecret: 'test-secret-0123456789abcdef',
      ...config,
    };
  }

  async start(openStore: () => Promise<Store>, deps: Omit<AppDeps, 'store' | 'temporal' | 'config'> = {}): Promise<this> {
    this.server = await startDevServer({ dbFile: path.join(this.dir, 't.sqlite') });
    this.connection = await Connection.connect({ address: this.server.address });
    this.temporal = new Client({ connection: this.connection, namespace: this.config.namespace });
    this.store = await openStore();
    tokens.set(this.store, (await this.store.createApiToken({ owner: 'admin', role: 'admin' })).token);
    this.app = createApp({ store: this.store, temporal: this.temporal, config: this.config, ...deps });
    return this;
  }

  async stop(): Promise<void> {
    await this.app?.drain();
    await this.store?.close();
    await this.connection?.close();
    await this.server?.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
