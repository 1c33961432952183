/**
 * `node dist/workers/bundle-workflows.js <out.js>`: bundles the workflow code once, at image
 * build time (Dockerfile), with the failure converter the worker uses. A worker given the file
 * (`CLOUDGATE_WORKFLOW_BUNDLE`) starts without webpack and swc, and every replica runs the
 * very same workflow code.
 */
import { writeFileSync } from 'node:fs';
import { bundleWorkflowCode } from '@temporalio/worker';
import { WORKFLOW_BUNDLE_OPTIONS, WORKFLOWS_PATH } from './worker.js';

const out = process.argv[2];
if (!out) {
  console.error('usage: bundle-workflows <output file>');
  process.exit(2);
}
const { code } = await bundleWorkflowCode(WORKFLOW_BUNDLE_OPTIONS);
writeFileSync(out, code);
console.log(`workflow bundle ${out}: ${(code.length / 1024).toFixed(0)} KiB from ${WORKFLOWS_PATH}`);
