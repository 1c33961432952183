/**
 * supertest against an app built in-process, as an admin: every route but the public ones
 * needs a bearer (api/auth.ts). One API token per store, issued on first use.
 */
import supertest from 'supertest';
import type { App } from 'supertest/types.js';
import type { Store } from '../store/index.js';

const tokens = new WeakMap<Store, string>();

/** The admin token of `store` (owner `admin`), created once. */
export function adminToken(store: Store): string {
  let token = tokens.get(store);
  if (!token) {
    token = store.createApiToken({ owner: 'admin', role: 'admin' }).token;
    tokens.set(store, token);
  }
  return token;
}

/** `supertest(app)` with `Authorization: Bearer <admin token>` on every request (a test may set another). */
export const asAdmin = (app: App, store: Store) => supertest.agent(app).set('Authorization', `Bearer ${adminToken(store)}`);
