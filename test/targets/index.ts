/**
 * Every cloud the contract suite runs against, each on the most real peer that runs here.
 * Add a target per adapter (one file each) to this list.
 */
import { cloudstackTarget } from './cloudstack.js';
import { libvirtTarget } from './libvirt.js';
import { ec2Target } from './ec2.js';
import { occiTarget } from './occi.js';
import { simTarget } from './sim.js';
import type { Target } from './types.js';

export const TARGETS: Target[] = [
  simTarget,
  libvirtTarget,
  ec2Target,
  occiTarget,
  cloudstackTarget,
  // more targets: one line each
];
