/**
 * What each contextualization agent on a CernVM reads from the raw user-data, computed the
 * way the agent itself reads it, so a user can see it without booting a VM (the context
 * preview's `?agent=`). The test suite checks these views against the real readers
 * (`test/readers/`: amiconfig under Python 2.7, µCernVM's parser, Debian's cloud-init).
 */
import { SECTION_LINE } from './context.js';
import { AMICONFIG_CONTENT_TYPE, CLOUD_CONFIG_CONTENT_TYPE, PHONE_HOME_CONTENT_TYPE, UCERNVM_CONTENT_TYPE, type UserDataPart } from './user-data.js';

/** The agents a preview can show. */
export const AGENTS = ['ucernvm', 'amiconfig', 'cloud-init'] as const;
export type Agent = (typeof AGENTS)[number];

/**
 * µCernVM's `parse_user_data` (cernvm-micro packages.d/extras/src/parse_user_data.cc): lines
 * end at `\n` only, the markers must be whole lines, reading stops at the first
 * `[ucernvm-end]`, a line is split at its first `=`, yes/on/true → 1, no/off/false → 0, keys
 * upper-cased. Returns the `_UCONTEXT_<KEY>=<value>` lines the bootloader then sources.
 */
export function ucernvmReads(userData: string): string[] {
  const out: string[] = [];
  let inside = false;
  const lines = userData.split('\n');
  lines.pop(); // a last line without "\n" is never looked at
  for (const line of lines) {
    if (line === '[ucernvm-begin]') {
      inside = true;
      continue;
    }
    if (line === '[ucernvm-end]') break;
    if (!inside) continue;
    const at = line.indexOf('=');
    if (at < 0) continue;
    let value = line.slice(at + 1);
    const upper = value.toUpperCase();
    if (upper === 'YES' || upper === 'ON' || upper === 'TRUE') value = '1';
    if (upper === 'NO' || upper === 'OFF' || upper === 'FALSE') value = '0';
    out.push(`_UCONTEXT_${line.slice(0, at).toUpperCase()}=${value}`);
  }
  return out;
}

/** Python 2.7's RawConfigParser.SECTCRE and OPTCRE, the patterns amiconfig filters lines with. */
const SECTCRE = SECTION_LINE;
const OPTCRE = /^([^:=\s][^:=]*?)\s*([:=])\s*([^\n]*)$/; // [^\n]: Python's "." takes "\r", JavaScript's does not

/**
 * amiconfig's reading of the whole raw user-data (cernvm/amiconfig rpath/amiconfig/userdata.py):
 * `INIFileStub.sanitize` keeps section lines and, after the first one, option lines; Python
 * 2.7's `ConfigParser` reads them (option names lower-cased, a `;` after whitespace starts a
 * comment, `""` is empty, a repeated section continues, a repeated option is overwritten).
 * Sections in order, each with its options in order; `DEFAULT`'s options are kept apart
 * as Python does (plugins read their own section only).
 */
export function amiconfigReads(userData: string): Map<string, Map<string, string>> {
  const kept: string[] = [];
  let found = false;
  for (const line of userData.split('\n')) {
    if (SECTCRE.test(line)) {
      found = true;
      kept.push(line);
    }
    if (found && OPTCRE.test(line)) kept.push(line);
  }
  const sections = new Map<string, Map<string, string>>();
  let current: Map<string, string> | undefined;
  for (const line of kept) {
    if (line.trim() === '' || line[0] === '#' || line[0] === ';') continue;
    if ((line[0] === 'r' || line[0] === 'R') && line.trim().split(/\s+/)[0].toLowerCase() === 'rem') continue;
    const section = SECTCRE.exec(line);
    if (section) {
      const name = section[1];
      current = sections.get(name) ?? new Map<string, string>();
      sections.set(name, current);
      continue;
    }
    const option = OPTCRE.exec(line);
    if (!option || !current) continue; // sanitize let neither through
    let value = option[3];
    const semi = value.indexOf(';');
    if (semi > 0 && /\s/.test(value[semi - 1])) value = value.slice(0, semi);
    value = value.trim();
    if (value === '""') value = '';
    current.set(option[1].trimEnd().toLowerCase(), value);
  }
  return sections;
}

/** Which agent reads a part, for the cloud-init view's notes on the parts it leaves alone. */
const READER: Record<string, string> = {
  [UCERNVM_CONTENT_TYPE]: 'µCernVM',
  [AMICONFIG_CONTENT_TYPE]: 'amiconfig',
  [PHONE_HOME_CONTENT_TYPE]: "cloudgate's phone-home agent",
};

/**
 * What one agent reads, as text: µCernVM the `_UCONTEXT_` variables it sources; amiconfig its
 * INI sections (`key = value`, as ConfigParser writes them), every section it sees, those its
 * plugins use and those that merely absorb other parts' lines; cloud-init its cloud-config
 * parts in order with the merge rule of each, and the parts it leaves to other agents.
 */
export function agentView(agent: Agent, userData: string, parts: UserDataPart[]): string {
  if (agent === 'ucernvm') {
    const lines = ucernvmReads(userData);
    return `# µCernVM reads the [ucernvm-begin] block and sources these variables at boot\n${lines.join('\n')}${lines.length ? '\n' : ''}`;
  }
  if (agent === 'amiconfig') {
    const out = ['# amiconfig reads the whole user-data as one INI file; its cernvm plugin uses [amiconfig] and [cernvm], other sections only absorb the lines of other parts'];
    for (const [name, options] of amiconfigReads(userData)) {
      out.push('', `[${name}]`, ...[...options].map(([k, v]) => `${k} = ${v}`));
    }
    return `${out.join('\n')}\n`;
  }
  const out: string[] = [];
  parts.forEach((p, i) => {
    const where = `part ${i + 1}, ${p.filename} (${p.contentType})`;
    if (p.contentType !== CLOUD_CONFIG_CONTENT_TYPE) {
      out.push(`# ${where}: no cloud-init handler; left to ${READER[p.contentType] ?? 'another agent'}`, '');
      return;
    }
    out.push(`# ${where}: cloud-config${p.mergeType ? `, merged into the parts before it with Merge-Type: ${p.mergeType}` : ''}`);
    out.push(p.body.endsWith('\n') ? p.body : `${p.body}\n`);
  });
  return out.join('\n');
}
