/** Dependency graph of services: cycle detection and deployment levels. Pure. */

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

/** Groups services into levels: level 0 has no dependencies, level k depends only on levels < k. */
export function dependencyLevels(nodes: readonly Node[]): string[][] {
  const level = new Map<string, number>();
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const depth = (name: string, guard: Set<string>): number => {
    const known = level.get(name);
    if (known !== undefined) return known;
    if (guard.has(name)) throw new Error(`dependency cycle through "${name}"`);
    guard.add(name);
    const deps = byName.get(name)?.dependsOn ?? [];
    const d = deps.length === 0 ? 0 : 1 + Math.max(...deps.map((x) => depth(x, guard)));
    guard.delete(name);
    level.set(name, d);
    return d;
  };
  const levels: string[][] = [];
  for (const n of nodes) {
    const d = depth(n.name, new Set());
    (levels[d] ??= []).push(n.name);
  }
  return levels.filter(Boolean);
}
