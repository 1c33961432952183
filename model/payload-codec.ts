/**
 * The Temporal payload codec: AES-256-GCM over every payload the client and the worker send
 * to Temporal (workflow and activity inputs and results, signals, updates, query answers,
 * local-activity markers, summaries), so Temporal's database holds ciphertext only. The
 * design is the Temporal samples' encryption codec: each payload becomes
 *
 *   metadata: { encoding: "binary/encrypted", "encryption-key-id": <key id> }
 *   data:     nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes) of the serialized original Payload proto
 *
 * Keys come from a keyring (`store/secret.ts` loads it): new payloads are encrypted with the
 * current key, decoding picks the key the payload names, so after a new current key is added
 * payloads written under the old one stay readable. Payloads that are not
 * `binary/encrypted` (written before the codec existed, committed replay fixtures) pass
 * through decode unchanged. Codecs run outside the workflow sandbox, in the client's and the
 * worker's main thread; workflow code never sees this file.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { DefaultFailureConverter, defaultPayloadConverter, type LoadedDataConverter, type Payload, type PayloadCodec } from '@temporalio/common';
// CommonJS whose named exports Node's ESM loader cannot see (the worker process runs under tsx): take the namespace object.
import protos from '@temporalio/proto';

const { temporal } = protos;

export const ENCRYPTED_ENCODING = 'binary/encrypted';
export const KEY_ID_METADATA = 'encryption-key-id';
export const PAYLOAD_KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** Key ids go into every payload's metadata and into the keys file: short and plain. */
export const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;
const HEX_KEY = /^[0-9a-fA-F]{64}$/;

/** The keys of the codec: `current` encrypts, every key decrypts payloads that name it. */
export interface PayloadKeyring {
  current: string;
  keys: ReadonlyMap<string, Buffer>;
}

/** A payload names a key the keyring does not have (it was removed, or another gateway wrote it). */
export class UnknownPayloadKeyError extends Error {
  constructor(readonly keyId: string) {
    super(`payload is encrypted with key "${keyId}", which is not in the payload keyring (CLOUDGATE_PAYLOAD_KEYS or <data>/payload-keys)`);
    this.name = 'UnknownPayloadKeyError';
  }
}

/** A `binary/encrypted` payload that does not decrypt: tampered, truncated, or under a different key with the same id. */
export class PayloadDecryptError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PayloadDecryptError';
  }
}

/**
 * Parses `id1:<64 hex>,id2:<64 hex>` (commas, semicolons or newlines between entries; the
 * first is current). `source` names where the text came from in error messages; no key
 * material is ever part of an error.
 */
export function parsePayloadKeys(text: string, source = 'CLOUDGATE_PAYLOAD_KEYS'): PayloadKeyring {
  const entries = text
    .split(/[,;\n]/)
    .map((s) => s.trim())
    .filter((s) => s !== '' && !s.startsWith('#'));
  if (entries.length === 0) throw new Error(`${source} names no key (expected "id:<64 hex digits>", first one current)`);
  const keys = new Map<string, Buffer>();
  for (const [i, entry] of entries.entries()) {
    const colon = entry.indexOf(':');
    const id = colon < 0 ? '' : entry.slice(0, colon).trim();
    const hex = colon < 0 ? '' : entry.slice(colon + 1).trim();
    if (!KEY_ID.test(id)) throw new Error(`${source}: entry ${i + 1} needs a key id of letters, digits, ".", "_" or "-" before ":"`);
    if (!HEX_KEY.test(hex)) throw new Error(`${source}: key "${id}" must be 64 hex digits (32 bytes)`);
    if (keys.has(id)) throw new Error(`${source}: key id "${id}" appears twice`);
    keys.set(id, Buffer.from(hex, 'hex'));
  }
  return { current: entries[0].slice(0, entries[0].indexOf(':')).trim(), keys };
}

/** `id:<hex>` lines, current first: the text `parsePayloadKeys` reads back. */
export function formatPayloadKeys(keyring: PayloadKeyring): string {
  const ids = [keyring.current, ...[...keyring.keys.keys()].filter((id) => id !== keyring.current)];
  return ids.map((id) => `${id}:${keyring.keys.get(id)!.toString('hex')}\n`).join('');
}

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const text = (b: Uint8Array | null | undefined): string | undefined => (b ? Buffer.from(b).toString('utf8') : undefined);

/** True for a payload this codec wrote (whatever its key). */
export function isEncryptedPayload(p: Pick<Payload, 'metadata'>): boolean {
  return text(p.metadata?.encoding) === ENCRYPTED_ENCODING;
}

export class AesGcmPayloadCodec implements PayloadCodec {
  constructor(readonly keyring: PayloadKeyring) {
    if (!keyring.keys.has(keyring.current)) throw new Error(`the payload keyring has no current key "${keyring.current}"`);
    for (const [id, key] of keyring.keys) {
      if (!KEY_ID.test(id)) throw new Error(`payload key id "${id}" is not a plain name`);
      if (key.length !== PAYLOAD_KEY_BYTES) throw new Error(`payload key "${id}" must be ${PAYLOAD_KEY_BYTES} bytes`);
    }
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((p) => this.encryptPayload(p));
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((p) => this.decryptPayload(p));
  }

  /** One payload, encrypted with the current key (synchronous: node:crypto is). */
  encryptPayload(payload: Payload): Payload {
    const key = this.keyring.keys.get(this.keyring.current)!;
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', key, nonce);
    const plain = temporal.api.common.v1.Payload.encode(payload).finish();
    const data = Buffer.concat([nonce, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return {
      metadata: { encoding: utf8(ENCRYPTED_ENCODING), [KEY_ID_METADATA]: utf8(this.keyring.current) },
      data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    };
  }

  /** One payload back as it was encoded; a payload that is not `binary/encrypted` is returned as it is. */
  decryptPayload(payload: Payload): Payload {
    if (!isEncryptedPayload(payload)) return payload;
    const keyId = text(payload.metadata?.[KEY_ID_METADATA]);
    if (!keyId) throw new PayloadDecryptError(`encrypted payload without "${KEY_ID_METADATA}" metadata`);
    const key = this.keyring.keys.get(keyId);
    if (!key) throw new UnknownPayloadKeyError(keyId);
    const data = Buffer.from(payload.data ?? new Uint8Array());
    if (data.length < NONCE_BYTES + TAG_BYTES) throw new PayloadDecryptError(`encrypted payload (key "${keyId}") is too short to hold a nonce and a tag`);
    let plain: Buffer;
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, NONCE_BYTES));
      decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
      plain = Buffer.concat([decipher.update(data.subarray(NONCE_BYTES, data.length - TAG_BYTES)), decipher.final()]);
    } catch (err) {
      throw new PayloadDecryptError(`encrypted payload does not decrypt with key "${keyId}" (tampered, or another key under that id)`, { cause: err });
    }
    return temporal.api.common.v1.Payload.decode(plain);
  }
}

/**
 * A client's data converter (`new Client({dataConverter})`, replay): the codec, and failures
 * whose message and stack trace go into an encoded (so encrypted) attributes payload — the
 * same converter the worker loads from `workers/failure-converter.cjs`.
 */
export function payloadDataConverter(keys: PayloadKeyring | AesGcmPayloadCodec): LoadedDataConverter {
  return {
    payloadConverter: defaultPayloadConverter,
    failureConverter: new DefaultFailureConverter({ encodeCommonAttributes: true }),
    payloadCodecs: [keys instanceof AesGcmPayloadCodec ? keys : new AesGcmPayloadCodec(keys)],
  };
}

/** A fresh random key (for a new keys file, tests and rotation). */
export function newPayloadKey(): Buffer {
  return randomBytes(PAYLOAD_KEY_BYTES);
}
