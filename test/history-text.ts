/**
 * Workflow histories as searchable text. `JSON.stringify` of a fetched history renders each
 * payload's bytes as `{"0":123,…}`, in which no secret could ever be found; this walks the
 * history and decodes every byte array as UTF-8 (payloads are JSON), so a leak is visible.
 *
 * Payloads in Temporal are encrypted (`model/payload-codec.ts`), and a leak check over
 * ciphertext would pass whatever the payload held: every `binary/encrypted` payload met on
 * the way is decrypted with the keys the harness registered ({@link useHistoryKeys}) and its
 * plaintext walked instead. One that cannot be decrypted throws.
 */
import { AesGcmPayloadCodec, isEncryptedPayload, type PayloadKeyring } from '../model/payload-codec.js';

const codecs: AesGcmPayloadCodec[] = [];

/** Lets {@link historyText} decrypt payloads written under these keys (called by `startStack`). */
export function useHistoryKeys(keyring: PayloadKeyring): void {
  codecs.unshift(new AesGcmPayloadCodec(keyring));
}

function decrypt(payload: { metadata?: Record<string, Uint8Array> | null; data?: Uint8Array | null }): unknown {
  const keyId = Buffer.from(payload.metadata?.['encryption-key-id'] ?? new Uint8Array()).toString('utf8');
  const codec = codecs.find((c) => c.keyring.keys.has(keyId));
  if (!codec) throw new Error(`historyText: a payload is encrypted with key "${keyId}", which no started stack registered`);
  return codec.decryptPayload(payload);
}

export function historyText(value: unknown): string {
  const out: string[] = [];
  const walk = (v: unknown): void => {
    if (v instanceof Uint8Array) out.push(Buffer.from(v).toString('utf8'));
    else if (Array.isArray(v)) v.forEach(walk);
    else if (v !== null && typeof v === 'object') {
      const metadata = (v as { metadata?: unknown }).metadata;
      if (metadata !== null && typeof metadata === 'object' && isEncryptedPayload(v as { metadata: Record<string, Uint8Array> })) {
        return walk(decrypt(v as { metadata: Record<string, Uint8Array> }));
      }
      for (const [k, x] of Object.entries(v)) {
        out.push(k);
        walk(x);
      }
    } else if (v !== undefined && v !== null) out.push(String(v));
  };
  walk(value);
  return out.join('\n');
}

/**
 * Replaces every encrypted payload in `value` (a fetched history) by its plaintext, in place:
 * recorded replay fixtures must not depend on the keys of the stack that recorded them.
 */
export function decryptPayloadsInPlace(value: unknown): void {
  if (Array.isArray(value)) return value.forEach(decryptPayloadsInPlace);
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return;
  const metadata = (value as { metadata?: unknown }).metadata;
  if (metadata !== null && typeof metadata === 'object' && isEncryptedPayload(value as { metadata: Record<string, Uint8Array> })) {
    const plain = decrypt(value as { metadata: Record<string, Uint8Array> }) as { metadata: Record<string, Uint8Array>; data: Uint8Array };
    Object.assign(value, { metadata: { ...plain.metadata }, data: plain.data });
    return;
  }
  for (const x of Object.values(value)) decryptPayloadsInPlace(x);
}
