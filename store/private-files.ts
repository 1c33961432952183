/**
 * Files only cloudgate may read (issue 11): the data folder is 0700, the SQLite files in it
 * 0600, and a key file that group or others may read stops the process with the fix to run.
 */
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, statSync } from 'node:fs';

/**
 * Makes the data folder (and missing parents, 0700) and sets it to 0700 if this user owns
 * it. Only the configured data folder: never chmod a parent someone else chose.
 */
export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = statSync(dir);
  if ((st.mode & 0o077) !== 0 && st.uid === process.getuid?.()) chmodSync(dir, 0o700);
}

/**
 * Creates `file` empty with mode 0600 if it is missing, else sets it to 0600, and so any
 * `-wal`, `-shm` or `-journal` beside it (SQLite creates those with the database's mode).
 * Call before SQLite opens the file, so it is never readable by others, not even at first.
 */
export function ensurePrivateFile(file: string): void {
  closeSync(openSync(file, 'a', 0o600));
  chmodPrivate(file);
}

/** Sets an existing file, and the SQLite files beside it, to 0600. */
export function chmodPrivate(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`, `${file}-journal`]) {
    if (existsSync(f) && (statSync(f).mode & 0o077) !== 0) chmodSync(f, 0o600);
  }
}

/**
 * Refuses a key file (token secret, secrets key, payload keys, admin token) that group or
 * others may read or write: throws an error naming the file, its mode and the fix.
 */
export function assertPrivateKeyFile(file: string, opts: { missingOk?: boolean } = {}): void {
  if (opts.missingOk && !existsSync(file)) return;
  const mode = statSync(file).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new Error(
      `${file} holds a secret but its mode is ${mode.toString(8).padStart(4, '0')} (group or others may read it); ` +
        `refusing to start: run \`chmod 600 ${file}\` (and consider the key exposed)`,
    );
  }
}
