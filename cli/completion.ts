/**
 * Shell completion scripts for bash and zsh, generated from the command tree itself (so a new
 * command or option completes without editing a script). Cluster, context and token ids are
 * completed by asking the API through the command (`cloudgate get clusters -o name`), with
 * the user's own credentials; errors are silenced so a shell never shows one.
 */
import type { Command } from 'commander';

/** What a positional argument completes to: a command that lists candidates, one per line. */
const DYNAMIC: Record<string, string> = {
  cluster: 'cloudgate get clusters -o name',
  context: 'cloudgate get contexts -o name',
  token: 'cloudgate token list -o name',
};

/** Commands (by path) whose first positional argument is an id of a kind of {@link DYNAMIC}. */
const ID_ARGS: Record<string, keyof typeof DYNAMIC> = {
  scale: 'cluster',
  pause: 'cluster',
  resume: 'cluster',
  retry: 'cluster',
  down: 'cluster',
  'describe cluster': 'cluster',
  'context edit': 'context',
  'context preview': 'context',
  'context pair': 'context',
  'token revoke': 'token',
};

/** Fixed words a positional argument takes (commander's choices are for options only). */
const WORDS: Record<string, string[]> = {
  get: ['clusters', 'definitions', 'contexts', 'clouds'],
  describe: ['cluster'],
  completion: ['bash', 'zsh'],
};

/** Options whose value is a file, or one of fixed values. */
const FILE_OPTIONS = ['-f', '--file', '--token-file'];

interface Node {
  path: string;
  /** Flags that take a value: the word after one is its value, not a command. */
  valued: string[];
  description: string;
  options: string[];
  /** Values of options that take one of fixed choices. */
  choices: Record<string, string[]>;
  children: Node[];
}

function tree(cmd: Command, prefix = ''): Node[] {
  return cmd.commands
    .filter((c) => c.name() !== 'help')
    .map((c) => {
      const path = prefix ? `${prefix} ${c.name()}` : c.name();
      const choices: Record<string, string[]> = {};
      for (const o of c.options) {
        if (o.argChoices) for (const flag of [o.short, o.long]) if (flag) choices[flag] = o.argChoices;
      }
      return {
        path,
        valued: c.options.filter((o) => o.required || o.optional).flatMap((o) => [o.short, o.long].filter((f): f is string => Boolean(f))),
        description: c.description(),
        options: [...c.options.flatMap((o) => [o.long ?? o.short ?? '']).filter(Boolean), '--help'],
        choices,
        children: tree(c, path),
      };
    });
}

const flatten = (nodes: Node[]): Node[] => nodes.flatMap((n) => [n, ...flatten(n.children)]);
/** The words at a command path's next position: its subcommands, or its fixed words. */
const nextWords = (n: Node): string[] => (n.children.length ? n.children.map((c) => c.path.split(' ').pop()!) : (WORDS[n.path] ?? []));
/** Every command path the scripts walk: the commands, and `describe cluster` (a fixed word before an id). */
const paths = (all: Node[]): string[] => [...new Set([...all.map((n) => n.path), ...Object.keys(ID_ARGS)])];
/** Each flag's choices over every command (`-o` takes `name` on some, not on others: offer the union). */
const choicesOf = (all: Node[]): [string, string[]][] => {
  const m = new Map<string, Set<string>>();
  for (const n of all) for (const [flag, vals] of Object.entries(n.choices)) vals.forEach((v) => m.set(flag, (m.get(flag) ?? new Set()).add(v)));
  return [...m].map(([flag, vals]) => [flag, [...vals]]);
};
const valuedFlags = (all: Node[]): string[] => [...new Set(all.flatMap((n) => n.valued))].sort();

export function bashCompletion(program: Command): string {
  const nodes = tree(program);
  const all = flatten(nodes);
  const quote = (ws: string[]) => `"${ws.join(' ')}"`;
  const optionCases = all.map((n) => `      '${n.path}') opts=${quote(n.options)} ;;`).join('\n');
  const choiceCases = choicesOf(all).map(([flag, vals]) => `    ${flag}) COMPREPLY=( $(compgen -W ${quote(vals)} -- "$cur") ); return ;;`).join('\n');
  const wordCases = all
    .filter((n) => nextWords(n).length)
    .map((n) => `      '${n.path}') COMPREPLY=( $(compgen -W ${quote(nextWords(n))} -- "$cur") ); return ;;`)
    .join('\n');
  const idCases = Object.entries(ID_ARGS)
    .map(([path, kind]) => `      '${path}') COMPREPLY=( $(compgen -W "$(${DYNAMIC[kind]} 2>/dev/null)" -- "$cur") ); return ;;`)
    .join('\n');
  return `# bash completion for cloudgate. Load it with: source <(cloudgate completion bash)
# or save it: cloudgate completion bash > ~/.local/share/bash-completion/completions/cloudgate
_cloudgate() {
  local cur prev path word i opts=""
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  case "$prev" in
    ${FILE_OPTIONS.join('|')}) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;
${choiceCases}
  esac
  # The command path so far: the words before the cursor that are commands, not options or their values.
  path=""
  for (( i = 1; i < COMP_CWORD; i++ )); do
    word="\${COMP_WORDS[i]}"
    case "$word" in
      ${valuedFlags(all).join('|')}) (( i++ )); continue ;;
      -*) continue ;;
    esac
    case "\${path:+$path }$word" in
      ${paths(all).map((p) => `'${p}'`).join('|')}) path="\${path:+$path }$word" ;;
      *) break ;;
    esac
  done
  if [[ $cur == -* ]]; then
    case "$path" in
${optionCases}
    esac
    COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    return
  fi
  # The first positional word after the command path.
  if [[ $i -eq $COMP_CWORD ]]; then
    case "$path" in
      '') COMPREPLY=( $(compgen -W ${quote(nodes.map((n) => n.path))} -- "$cur") ); return ;;
${wordCases}
${idCases}
    esac
  fi
}
complete -o default -F _cloudgate cloudgate
`;
}

export function zshCompletion(program: Command): string {
  const nodes = tree(program);
  const all = flatten(nodes);
  const esc = (s: string) => s.replace(/'/g, `'\\''`).replace(/:/g, '\\:');
  const described = (ns: Node[]) => ns.map((n) => `'${esc(n.path.split(' ').pop()!)}:${esc(n.description)}'`).join(' ');
  const subCases = all
    .filter((n) => nextWords(n).length)
    .map((n) =>
      n.children.length
        ? `    '${n.path}') local -a subs; subs=(${described(n.children)}); _describe 'command' subs; return ;;`
        : `    '${n.path}') compadd -- ${nextWords(n).join(' ')}; return ;;`,
    )
    .join('\n');
  const idCases = Object.entries(ID_ARGS)
    .map(([path, kind]) => `    '${path}') compadd -- \${(f)"$(${DYNAMIC[kind]} 2>/dev/null)"}; return ;;`)
    .join('\n');
  const optionCases = all.map((n) => `      '${n.path}') compadd -- ${n.options.join(' ')} ;;`).join('\n');
  const choiceCases = choicesOf(all).map(([flag, vals]) => `    ${flag}) compadd -- ${vals.join(' ')}; return ;;`).join('\n');
  return `#compdef cloudgate
# zsh completion for cloudgate. Load it with: source <(cloudgate completion zsh)  (after compinit)
# or save it as _cloudgate in a folder of $fpath.
_cloudgate() {
  local cmdpath="" word
  local -i i=2
  case \${words[CURRENT-1]} in
    ${FILE_OPTIONS.join('|')}) _files; return ;;
${choiceCases}
  esac
  while (( i < CURRENT )); do
    word=\${words[i]}
    (( i++ ))
    case $word in
      ${valuedFlags(all).join('|')}) (( i++ )); continue ;;
      -*) continue ;;
    esac
    case "\${cmdpath:+$cmdpath }$word" in
      ${paths(all).map((p) => `'${p}'`).join('|')}) cmdpath="\${cmdpath:+$cmdpath }$word" ;;
      *) (( i-- )); break ;;
    esac
  done
  if [[ \${words[CURRENT]} == -* ]]; then
    case "$cmdpath" in
${optionCases}
    esac
    return
  fi
  (( i == CURRENT )) || return
  case "$cmdpath" in
    '') local -a cmds; cmds=(${described(nodes)}); _describe 'command' cmds ;;
${subCases}
${idCases}
  esac
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _cloudgate "$@"
else
  compdef _cloudgate cloudgate
fi
`;
}
