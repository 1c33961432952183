/** What the shared adapter contract suite needs from each cloud's test target. */
import type { CloudAdapter } from '../../clouds/contract.js';

/** One adapter on fresh state, plus what the suite needs to exercise it. */
export interface Harness {
  adapter: CloudAdapter;
  /** An image the peer can boot. */
  image: string;
  /** How long an instance may take to reach RUNNING. */
  runningWithinMs: number;
  /** A second adapter on the same cloud state: what a worker restarted after a crash gets. */
  reopen(): Promise<CloudAdapter>;
  /** An adapter on the same cloud whose create calls are throttled; omit when the peer can't be made to throttle. */
  throttled?(): Promise<CloudAdapter>;
  /** Closes every adapter made here and removes the peer's state. */
  cleanup(): Promise<void>;
}

export interface Target {
  name: string;
  make(): Promise<Harness>;
}

