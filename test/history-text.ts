/**
 * Workflow histories as searchable text. `JSON.stringify` of a fetched history renders each
 * payload's bytes as `{"0":123,…}`, in which no secret could ever be found; this walks the
 * history and decodes every byte array as UTF-8 (payloads are JSON), so a leak is visible.
 */
export function historyText(value: unknown): string {
  const out: string[] = [];
  const walk = (v: unknown): void => {
    if (v instanceof Uint8Array) out.push(Buffer.from(v).toString('utf8'));
    else if (Array.isArray(v)) v.forEach(walk);
    else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        out.push(k);
        walk(x);
      }
    } else if (v !== undefined && v !== null) out.push(String(v));
  };
  walk(value);
  return out.join('\n');
}
