/**
 * Every cloud the contract suite runs against, each on the most real peer that runs here.
 * Add a target per adapter (one file each) to this list.
 */
import { simTarget } from './sim.js';
import type { Target } from './types.js';

export const TARGETS: Target[] = [
  simTarget,
  // more targets: one line each
];
