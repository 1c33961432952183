/**
 * What differs between two JSON documents, as lines a person reads: `~ path: old → new`,
 * `+ path: value`, `- path: value`. Lists of objects that each carry a unique `name`
 * (services, users) are matched by name (`services[workers].min`), so inserting one service
 * does not show every later one as changed.
 */

/** JSON with object keys sorted at every level: two documents are the same exactly when these are equal. */
export function canonical(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (isObject(v)) {
    return Object.fromEntries(
      Object.keys(v)
        .filter((k) => v[k] !== undefined)
        .sort()
        .map((k) => [k, sortKeys(v[k])]),
    );
  }
  return v;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

const short = (v: unknown): string => {
  const s = JSON.stringify(sortKeys(v)) ?? 'undefined';
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
};

/** Items all objects with distinct string names: matched by name. */
const byName = (a: unknown[]): Map<string, unknown> | undefined => {
  const m = new Map<string, unknown>();
  for (const x of a) {
    if (!isObject(x) || typeof x.name !== 'string' || m.has(x.name)) return undefined;
    m.set(x.name, x);
  }
  return m;
};

export function jsonDiff(a: unknown, b: unknown, path = ''): string[] {
  if (canonical(a) === canonical(b)) return [];
  const at = (k: string) => (path ? `${path}.${k}` : k);
  if (isObject(a) && isObject(b)) {
    const keys = [...new Set([...Object.keys(b), ...Object.keys(a)])].filter((k) => a[k] !== undefined || b[k] !== undefined);
    return keys.flatMap((k) => {
      if (a[k] === undefined) return [`+ ${at(k)}: ${short(b[k])}`];
      if (b[k] === undefined) return [`- ${at(k)}: ${short(a[k])}`];
      return jsonDiff(a[k], b[k], at(k));
    });
  }
  if (Array.isArray(a) && Array.isArray(b)) {
    const ma = byName(a);
    const mb = byName(b);
    if (ma && mb && (ma.size > 0 || mb.size > 0)) {
      const lines = [...mb.keys(), ...[...ma.keys()].filter((n) => !mb.has(n))].flatMap((n) => {
        const p = `${path}[${n}]`;
        if (!ma.has(n)) return [`+ ${p}: ${short(mb.get(n))}`];
        if (!mb.has(n)) return [`- ${p}`];
        return jsonDiff(ma.get(n), mb.get(n), p);
      });
      const common = (m: Map<string, unknown>, other: Map<string, unknown>) => [...m.keys()].filter((n) => other.has(n));
      const orderA = common(ma, mb);
      const orderB = common(mb, ma);
      if (orderA.join() !== orderB.join()) lines.push(`~ ${path}: order ${orderA.join(', ')} → ${orderB.join(', ')}`);
      return lines;
    }
  }
  return [`~ ${path || '(document)'}: ${short(a)} → ${short(b)}`];
}
