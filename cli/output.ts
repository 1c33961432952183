/**
 * How the command prints: aligned plain-text tables, JSON, YAML, bare names (for shell
 * completion and scripts), and the progress bar of `--wait`. ANSI escapes only when the
 * stream is a terminal (and `NO_COLOR` is unset), so logs and pipes get plain lines.
 */
import { stringify as stringifyYaml } from 'yaml';

export const OUTPUT_FORMATS = ['table', 'json', 'yaml', 'name'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** Where the command writes; tests and `--watch` pass their own. */
export interface Out {
  write(text: string): void;
  /** A terminal that understands cursor movement (and colour). */
  tty: boolean;
}

export const stdout: Out = {
  write: (t) => void process.stdout.write(t),
  tty: Boolean(process.stdout.isTTY) && !process.env.NO_COLOR && process.env.TERM !== 'dumb',
};

/** Columns padded to their widest cell; the last column is not padded. */
export function table(header: string[], rows: (string | number | undefined)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (c === undefined ? '' : String(c))))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()).join('\n') + '\n';
}

/** A document as JSON or YAML. */
export function serialise(value: unknown, format: 'json' | 'yaml'): string {
  return format === 'json' ? `${JSON.stringify(value, null, 2)}\n` : stringifyYaml(value, { lineWidth: 0 });
}

/** `3d`, `5h`, `12m`, `40s`: how long ago an ISO time was. */
export function age(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172_800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

/** `[########------------]`: `done` of `total` in `width` cells (full when total is 0). */
export function bar(done: number, total: number, width = 20): string {
  const filled = total <= 0 ? width : Math.min(width, Math.round((done / total) * width));
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}

const COLOURS: Record<string, string> = { READY: '32', TERMINATED: '32', FAILED: '31', DEGRADED: '33', WAITING_CAPACITY: '33', PAUSED: '36' };

/** A state, coloured on a terminal (green done, red failed, yellow in trouble). */
export function state(s: string, out: Out): string {
  const c = COLOURS[s];
  return out.tty && c ? `\x1b[${c}m${s}\x1b[0m` : s;
}

/**
 * A block of lines that redraws in place on a terminal (cursor up, clear line) and, in a log
 * or pipe, prints only the lines that changed since the last draw: one line per change.
 */
export class LiveBlock {
  private last: string[] = [];
  constructor(private readonly out: Out) {}

  draw(lines: string[]): void {
    if (this.out.tty) {
      const up = this.last.length ? `\x1b[${this.last.length}A` : '';
      this.out.write(up + lines.map((l) => `\x1b[2K${l}\n`).join('') + (this.last.length > lines.length ? '\x1b[J' : ''));
    } else {
      const changed = lines.filter((l) => !this.last.includes(l));
      if (changed.length) this.out.write(changed.map((l) => `${l}\n`).join(''));
    }
    this.last = lines;
  }
}
