/**
 * A definition's dependency graph, drawn as SVG: services in columns by depth (a service
 * stands right of everything it depends on, the order the cluster workflow starts them in),
 * an arrow from each dependency to its dependent. The same facts as a list for screen
 * readers; a cycle (which the API refuses) is named with the model's own `findCycle`.
 */
import { findCycle, type Node } from '../../model/graph.js';

const W = 150;
const H = 40;
const GAP_X = 70;
const GAP_Y = 24;
const PAD = 12;

/** Each service's column: 0 without dependencies, else one more than its deepest dependency's. */
function depths(nodes: readonly Node[]): Map<string, number> {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const depth = new Map<string, number>();
  const visit = (name: string, seen: Set<string>): number => {
    const known = depth.get(name);
    if (known !== undefined) return known;
    if (seen.has(name)) return 0; // a cycle: drawn flat, reported below
    seen.add(name);
    const deps = (byName.get(name)?.dependsOn ?? []).filter((d) => byName.has(d) && d !== name);
    const d = deps.length === 0 ? 0 : 1 + Math.max(...deps.map((x) => visit(x, seen)));
    depth.set(name, d);
    return d;
  };
  for (const n of nodes) visit(n.name, new Set());
  return depth;
}

export function DependencyGraph(props: { services: Node[] }) {
  const nodes = props.services.filter((s) => s.name !== '');
  if (nodes.length === 0) return <p class="muted">Name a service to see the graph.</p>;
  const depth = depths(nodes);
  const columns: string[][] = [];
  for (const n of nodes) (columns[depth.get(n.name) ?? 0] ??= []).push(n.name);
  const pos = new Map<string, { x: number; y: number }>();
  columns.forEach((col, c) => col.forEach((name, r) => pos.set(name, { x: PAD + c * (W + GAP_X), y: PAD + r * (H + GAP_Y) })));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GAP_X;
  const height = PAD * 2 + Math.max(...columns.map((c) => c.length)) * (H + GAP_Y) - GAP_Y;
  const edges = nodes.flatMap((n) => n.dependsOn.filter((d) => pos.has(d) && d !== n.name).map((d) => ({ from: d, to: n.name })));
  const cycle = findCycle(nodes);
  const sentence = (n: Node) => (n.dependsOn.length ? `${n.name} depends on ${n.dependsOn.join(' and ')}` : `${n.name} depends on nothing`);
  return (
    <figure class="graph">
      <svg viewBox={`0 0 ${width} ${height}`} width={width} height={height} role="img" aria-labelledby="graph-title">
        <title id="graph-title">Dependency graph: {nodes.map(sentence).join('; ')}</title>
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse">
            <path d="M 0 0 L 10 5 L 0 10 z" class="arrow-head" />
          </marker>
        </defs>
        {edges.map((e) => {
          const a = pos.get(e.from)!;
          const b = pos.get(e.to)!;
          const back = b.x <= a.x;
          return (
            <line
              key={`${e.from}->${e.to}`}
              class={back ? 'edge edge-cycle' : 'edge'}
              x1={back ? a.x + W / 2 : a.x + W}
              y1={back ? a.y + H : a.y + H / 2}
              x2={back ? b.x + W / 2 : b.x}
              y2={back ? b.y : b.y + H / 2}
              marker-end="url(#arrow)"
            />
          );
        })}
        {nodes.map((n) => {
          const p = pos.get(n.name)!;
          return (
            <g key={n.name} class="node" data-service={n.name}>
              <rect x={p.x} y={p.y} width={W} height={H} rx={6} />
              <text x={p.x + W / 2} y={p.y + H / 2} dominant-baseline="middle" text-anchor="middle">
                {n.name.length > 18 ? `${n.name.slice(0, 17)}…` : n.name}
              </text>
            </g>
          );
        })}
      </svg>
      <figcaption>
        {cycle ? (
          <span class="problem" role="alert">
            Dependency cycle: {cycle.join(' → ')}
          </span>
        ) : (
          <span class="muted">Arrows point from a service to the services that wait for it; columns deploy left to right.</span>
        )}
      </figcaption>
    </figure>
  );
}
