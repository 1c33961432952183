/**
 * A jest reporter beside the default one: after the run, each failed test again, one short
 * block each (its file, its name, the first lines of its error), so the reason a run failed is
 * in the last lines of the output, where a CI excerpt that keeps only the head and the tail of
 * a long log still shows it. Prints nothing when everything passed.
 */
import path from 'node:path';

const LINES = 14;
const WIDTH = 600;
// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*m/g;

/** The first lines of a failure message, without colours, the code frame or the stack. */
function firstLines(message) {
  const lines = [];
  for (const raw of message.replace(ANSI, '').split('\n')) {
    const line = raw.trimEnd();
    if (/^\s*(>?\s*\d+ \||at )/.test(line)) break;
    if (line.trim() === '' && lines.length > 0 && lines[lines.length - 1] === '') continue;
    lines.push(line.length > WIDTH ? `${line.slice(0, WIDTH)}…` : line);
    if (lines.length >= LINES) break;
  }
  return lines.join('\n').trim();
}

export default class FailureSummaryReporter {
  constructor(globalConfig) {
    this.rootDir = globalConfig.rootDir;
  }

  onRunComplete(_contexts, results) {
    const blocks = [];
    for (const file of results.testResults) {
      const name = path.relative(this.rootDir, file.testFilePath);
      if (file.testExecError) blocks.push(`✕ ${name} (the file itself)\n${firstLines(file.testExecError.message ?? String(file.testExecError))}`);
      for (const t of file.testResults) {
        if (t.status !== 'failed') continue;
        blocks.push(`✕ ${name} › ${t.fullName}\n${firstLines(t.failureMessages.join('\n'))}`);
      }
    }
    if (blocks.length === 0) return;
    process.stderr.write(`\nFailed (${blocks.length}), first lines of each:\n${blocks.join('\n\n')}\n\n`);
  }
}
