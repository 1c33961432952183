/**
 * Where the real-world test material lives: `../shared/peer-data/` beside the clone (CI has
 * it there too), read in place and never copied into the project. `PEER_DATA` overrides it.
 * A missing folder or file fails the test that needs it, saying where it looked.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The peer-data folder: `$PEER_DATA`, else `<project>/../shared/peer-data`. */
export const PEER_DATA = process.env.PEER_DATA ?? resolve(root, '..', 'shared', 'peer-data');

/** Absolute path of a file under the peer-data folder; throws naming the path when it is missing. */
export function peerDataPath(...parts: string[]): string {
  const p = join(PEER_DATA, ...parts);
  if (!existsSync(p)) {
    throw new Error(`real test material ${p} is missing: the tests read ../shared/peer-data beside the project (or $PEER_DATA); see its README.md`);
  }
  return p;
}

/** The bytes of a peer-data file. */
export const peerDataBytes = (...parts: string[]): Buffer => readFileSync(peerDataPath(...parts));

/** The text (UTF-8) of a peer-data file. */
export const peerDataText = (...parts: string[]): string => peerDataBytes(...parts).toString('utf8');

/** A peer-data JSON file, parsed. */
export const peerDataJson = <T = unknown>(...parts: string[]): T => JSON.parse(peerDataText(...parts)) as T;
