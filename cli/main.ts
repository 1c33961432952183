#!/usr/bin/env node
/**
 * `cloudgate`: the command-line client of the cloudgate REST API (the package's `bin`,
 * compiled to dist/cli/main.js by `npm run build`). Runs the command tree of program.ts and
 * ends every failure with one line on standard error and a documented exit code (client.ts).
 */
import { CommanderError } from 'commander';
import { CliError, EXIT } from './client.js';
import { buildProgram } from './program.js';

async function main(argv: string[]): Promise<number> {
  // Commander reports its own usage errors and throws (exitOverride, set in buildProgram); they end with EXIT.usage.
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.code === 'commander.helpDisplayed' || err.code === 'commander.version' ? EXIT.ok : EXIT.usage;
    }
    if (err instanceof CliError) {
      process.stderr.write(`cloudgate: ${err.message}\n`);
      return err.exitCode;
    }
    process.stderr.write(`cloudgate: unexpected error: ${(err as Error).stack ?? String(err)}\n`);
    return EXIT.refused;
  }
}

// Set, not exit(): pending writes to a pipe are flushed before the process ends.
process.exitCode = await main(process.argv);
