/**
 * `npm run bench`: the fixed three-tier benchmark (bench/three-tier.ts); `npm run bench -- --scale`:
 * the scale benchmark (bench/scale.ts).
 */
if (process.argv.includes('--scale')) await import('./scale.js');
else await import('./three-tier.js');
