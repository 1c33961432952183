/**
 * A fixed-rate reader for the benchmark, run as its own process so its work does not share
 * the API's event loop: `GET <url>` at `<rate>` requests per second (open loop: a request
 * starts on schedule whether or not earlier ones answered) until stdin closes, then prints
 * one JSON line: requests sent and answered, non-2xx answers, errors, p50/p90/p99/max in ms.
 *
 * Usage: BENCH_AUTHORIZATION='Bearer <token>' node --import tsx bench/read-load.ts <url> <rate>
 *
 * node:http with a keep-alive agent rather than fetch: on the bench's 2 cores fetch cost the
 * reader about 1.1 ms of CPU a request, a fifth of a core at 200/s taken from what it measures.
 */
import http from 'node:http';

const [url, rateArg] = process.argv.slice(2);
const rate = Number(rateArg ?? 200);
if (!url || !(rate > 0)) throw new Error('usage: read-load <url> <requests per second>');

const latencies: number[] = [];
/** Each answered request's start, seconds after the first: where in the run the slow ones fell. */
const startedAt: number[] = [];
let sent = 0;
let bad = 0;
let errors = 0;
let inFlight = 0;

const agent = new http.Agent({ keepAlive: true });
const headers = process.env.BENCH_AUTHORIZATION ? { authorization: process.env.BENCH_AUTHORIZATION } : {};

/** One GET, timed from its start to the last byte of the answer. */
const once = () => {
  sent++;
  inFlight++;
  const t0 = performance.now();
  const failed = () => {
    errors++;
    inFlight--;
  };
  http
    .get(url, { agent, headers }, (res) => {
      res.resume();
      res.on('end', () => {
        if (!res.statusCode || res.statusCode >= 300) bad++;
        latencies.push(performance.now() - t0);
        startedAt.push((t0 - started) / 1000);
        inFlight--;
      });
      res.on('error', failed);
    })
    .on('error', failed);
};

// Ticks of 10 ms, each firing the requests due by then: 200 req/s is two per tick.
const started = performance.now();
const timer = setInterval(() => {
  const due = Math.floor(((performance.now() - started) / 1000) * rate);
  while (sent < due) once();
}, 10);

const quantile = (sorted: number[], q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN);

/** p50 and p99 of the requests started in each {@link WINDOW_S} s of the run: a burst's tail apart from the quiet times'. */
const WINDOW_S = 10;
const windows = () => {
  const by = new Map<number, number[]>();
  latencies.forEach((ms, i) => {
    const w = Math.floor(startedAt[i] / WINDOW_S) * WINDOW_S;
    if (!by.has(w)) by.set(w, []);
    by.get(w)!.push(ms);
  });
  return [...by.entries()].map(([from, ms]) => {
    const s = ms.sort((a, b) => a - b);
    return { from, answered: s.length, p50: Math.round(quantile(s, 0.5)), p99: Math.round(quantile(s, 0.99)) };
  });
};

process.stdin.resume();
process.stdin.on('end', () => {
  clearInterval(timer);
  const seconds = (performance.now() - started) / 1000;
  const sorted = [...latencies].sort((a, b) => a - b);
  const round = (n: number) => Math.round(n * 10) / 10;
  process.stdout.write(
    `${JSON.stringify({
      seconds: round(seconds),
      sent,
      answered: latencies.length,
      perSecond: round(latencies.length / seconds),
      non2xx: bad,
      errors,
      unanswered: inFlight,
      p50: round(quantile(sorted, 0.5)),
      p90: round(quantile(sorted, 0.9)),
      p99: round(quantile(sorted, 0.99)),
      max: round(sorted.at(-1) ?? NaN),
      byWindow: windows(),
    })}\n`,
  );
  process.exit(0);
});
