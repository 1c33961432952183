/**
 * One racer of the cross-process quota test (test/quotas-audit.test.ts): opens the store file
 * given, waits for the common start time, then submits `count` one-instance clusters of owner
 * `race` as fast as it can, each checked and reserved by `createCluster`, and prints how many
 * got in and how many were refused. Run with `node --import tsx`.
 */
import { openSqliteStore, QuotaExceededError } from '../store/index.js';

const [file, definitionId, startAt, count] = process.argv.slice(2);
const store = await openSqliteStore(file, { secretsKey: Buffer.alloc(32) });
const defaultQuota = { maxInstances: 0, maxClusters: 0, maxCpus: 0 };
while (Date.now() < Number(startAt)) await new Promise((r) => setTimeout(r, 1));
let ok = 0;
let refused = 0;
for (let i = 0; i < Number(count); i++) {
  try {
    await store.createCluster(
      { id: `race-${process.pid}-${i}`, name: 'race', definitionId, cloud: 'sim', owner: 'race' },
      { claim: { owner: 'race', services: [{ service: 'w', instances: 1, cpus: 1 }] }, defaultQuota },
    );
    ok++;
  } catch (err) {
    if (!(err instanceof QuotaExceededError)) throw err;
    refused++;
  }
}
await store.close();
process.stdout.write(JSON.stringify({ ok, refused }));
