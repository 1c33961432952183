/** Dependency graph of services: cycle detection. Pure. */

export interface Node {
  name: string;
  dependsOn: readonly string[];
}

/**
 * Returns one dependency cycle as a closed path (`['a', 'b', 'a']`), or undefined.
 * Depth-first search with colours; deterministic (follows input order).
 */
export function findCycle(nodes: readonly Node[]): string[] | undefined {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const colour = new Map<string, 'grey' | 'black'>();
  const stack: string[] = [];
  const visit = (name: string): string[] | undefined => {
    const c = colour.get(name);
    if (c === 'black') return undefined;
    if (c === 'grey') return [...stack.slice(stack.indexOf(name)), name];
    colour.set(name, 'grey');
    stack.push(name);
    for (const d of byName.get(name)?.dependsOn ?? []) {
      if (!byName.has(d)) continue;
      const found = visit(d);
      if (found) return found;
    }
    stack.pop();
    colour.set(name, 'black');
    return undefined;
  };
  for (const n of nodes) {
    const found = visit(n.name);
    if (found) return found;
  }
  return undefined;
}
