/**
 * The stratum-1 readiness check: the `.cvmfspublished` and `.cvmfswhitelist` parsers on
 * real-format files, then `checkRepository` against local test servers (test/fakes/stratum1.ts)
 * that build those files per the CVMFS format: good, missing, wrong name, stale, revision
 * below the pin, expired whitelist, fail-over past a dead server, all unreachable.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  checkRepositories,
  checkRepository,
  cvmfsFailureType,
  expandServerUrl,
  isRetryableCvmfsFailure,
  ManifestError,
  NO_ANSWER,
  parseManifest,
  parseWhitelist,
  type CheckRepositoryOptions,
  type RepositoryCheck,
} from '../activities/cvmfs.js';
import { fakeSignature, manifestFile, startStratum1, type FakeStratum1 } from './fakes/stratum1.js';

const NOW = new Date('2025-06-02T12:30:00Z');
const minutesAgo = (n: number) => new Date(NOW.getTime() - n * 60_000);
const daysAhead = (n: number) => new Date(NOW.getTime() + n * 86_400_000);

/** A SHA-1 certificate fingerprint as `cvmfs_server` writes it into a whitelist. */
const SHA1_FP = '3A:1F:2C:9E:8D:7B:6A:5F:4E:3D:2C:1B:0A:9F:8E:7D:6C:5B:4A:39';

/** Shaped like a current `cvmfs_server` manifest: every field, in its order, then a binary signature. */
const REAL_MANIFEST = Buffer.concat([
  Buffer.from(
    [
      'C8f3b7a4c2e1d0f9a8b7c6d5e4f3a2b1c0d9e8f7a',
      'B1884160',
      'Rd41d8cd98f00b204e9800998ecf8427e',
      'D240',
      'S41275',
      'Gno',
      'Ano',
      'Nsft.cern.ch',
      'X3a1f2c9e8d7b6a5f4e3d2c1b0a9f8e7d6c5b4a39',
      'H0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d',
      'T1748867221',
      'Mb2c4e6a8f0d1e3a5c7b9d0f2e4a6c8b0d2f4e6a8',
      'Y7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b',
      '--',
      '5d41402abc4b2a76b9719d911017c592aa4c3d2f',
      '',
    ].join('\n'),
  ),
  fakeSignature('real-looking'),
]);

/** A whitelist as `cvmfs_server resign` writes it, with a commented fingerprint. */
const REAL_WHITELIST = Buffer.concat([
  Buffer.from(
    [
      '20250520093015',
      'E20250619093015',
      'Nsft.cern.ch',
      '3A:1F:2C:9E:8D:7B:6A:5F:4E:3D:2C:1B:0A:9F:8E:7D:6C:5B:4A:39',
      'bf:80:69:dd:2e:e8:3a:e0:b8:2c:1a:53:0a:20:e9:59:bc:93:24:e5 # old key, rotating out',
      '--',
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4',
      '',
    ].join('\n'),
  ),
  fakeSignature('whitelist'),
]);

describe('parseManifest', () => {
  it('reads every field of a real-looking manifest and ignores the binary signature', () => {
    const m = parseManifest(REAL_MANIFEST);
    expect(m).toEqual({
      catalogHash: '8f3b7a4c2e1d0f9a8b7c6d5e4f3a2b1c0d9e8f7a',
      catalogSize: 1884160,
      rootPathHash: 'd41d8cd98f00b204e9800998ecf8427e',
      ttlSeconds: 240,
      revision: 41275,
      name: 'sft.cern.ch',
      certificateHash: '3a1f2c9e8d7b6a5f4e3d2c1b0a9f8e7d6c5b4a39',
      historyHash: '0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d',
      publishedAt: new Date(1748867221 * 1000),
      garbageCollectable: false,
      alternativeName: false,
      metainfoHash: 'b2c4e6a8f0d1e3a5c7b9d0f2e4a6c8b0d2f4e6a8',
      reflogHash: '7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b',
      extra: {},
    });
  });

  it('takes a string too, keeps unknown letters in extra and hash suffixes as they are', () => {
    const m = parseManifest('Cabc123-rmd160\nRd41d8cd98f00b204e9800998ecf8427e\nD900\nS42\nNexample.cern.ch\nT1390301299\nLdeadbeef\nZtip\nGyes\n--\nedde5308\n');
    expect(m.catalogHash).toBe('abc123-rmd160');
    expect(m.garbageCollectable).toBe(true);
    expect(m.catalogSize).toBeUndefined();
    expect(m.certificateHash).toBeUndefined();
    expect(m.extra).toEqual({ L: 'deadbeef', Z: 'tip' });
  });

  it('joins repeated Z lines with "|" as the client does, and keeps the last of any other repeated letter', () => {
    const m = parseManifest('Cab\nRd41d8cd98f00b204e9800998ecf8427e\nD240\nS3\nS4\nNx.y\nT1\nZtip-a\nZtip-b\n--\n');
    expect(m.revision).toBe(4);
    expect(m.extra).toEqual({ Z: 'tip-a|tip-b' });
  });

  it('stops at the first "--" line even when the signature holds another', () => {
    const m = parseManifest(manifestFile('a.b.c', { revision: 7, publishedAt: NOW, whitelistExpires: NOW }));
    expect(m.revision).toBe(7);
    expect(Object.keys(m.extra)).toEqual([]);
  });

  it.each([
    ['S', 'revision'],
    ['N', 'repository name'],
    ['T', 'publish timestamp'],
    ['C', 'root catalog hash'],
  ])('names a missing %s field', (letter, what) => {
    const text = REAL_MANIFEST.toString('latin1').replace(new RegExp(`^${letter}.*\\n`, 'm'), '');
    const err = (() => {
      try {
        parseManifest(Buffer.from(text, 'latin1'));
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ManifestError);
    expect(err).toMatchObject({ file: '.cvmfspublished', field: letter });
    expect((err as Error).message).toContain(`missing field ${letter} (${what})`);
  });

  it('does not drop a CR before the LF: the client reads "Nsft.cern.ch\\r", which is not the repository', () => {
    const text = REAL_MANIFEST.toString('latin1').replace('Nsft.cern.ch\n', 'Nsft.cern.ch\r\n');
    expect(() => parseManifest(Buffer.from(text, 'latin1'))).toThrow(/line 8 \("Nsft\.cern\.ch"\) ends in CR.*CRLF/);
  });

  it('rejects a non-numeric revision and a file without "--" (an HTML error page, say)', () => {
    expect(() => parseManifest('Cab\nRcd\nD240\nSlatest\nNx.y\nT1\n--\n')).toThrow(/field S \(revision\) is not a whole number/);
    expect(() => parseManifest('<html><body>Service Unavailable</body></html>')).toThrow(/no "--" line/);
  });
});

describe('parseWhitelist', () => {
  it('reads the timestamp, expiry (to the hour, as the client does), name and fingerprints', () => {
    const w = parseWhitelist(REAL_WHITELIST);
    expect(w).toEqual({
      createdAt: new Date('2025-05-20T09:30:15Z'),
      expiresAt: new Date('2025-06-19T09:00:00Z'),
      name: 'sft.cern.ch',
      fingerprints: ['3A:1F:2C:9E:8D:7B:6A:5F:4E:3D:2C:1B:0A:9F:8E:7D:6C:5B:4A:39', 'BF:80:69:DD:2E:E8:3A:E0:B8:2C:1A:53:0A:20:E9:59:BC:93:24:E5'],
      pkcs7: false,
      caChain: false,
    });
  });

  it('notes Vpkcs7 and Wcachain', () => {
    const w = parseWhitelist(`20250101000000\nE20250131000000\nNx.y.z\nVpkcs7\nWcachain\n${SHA1_FP}\n--\n`);
    expect(w).toMatchObject({ pkcs7: true, caChain: true, fingerprints: [SHA1_FP] });
  });

  it('reads Vpkcs7 only right after the N line and Wcachain only after N or Vpkcs7, where the client looks', () => {
    const head = '20250101000000\nE20250131000000\nNx.y.z\n';
    expect(parseWhitelist(`${head}Wcachain\nVpkcs7\n${SHA1_FP}\n--\n`)).toMatchObject({ pkcs7: false, caChain: true, fingerprints: [SHA1_FP] });
    expect(parseWhitelist(`${head}${SHA1_FP}\nVpkcs7\nWcachain\n--\n`)).toMatchObject({ pkcs7: false, caChain: false, fingerprints: [SHA1_FP] });
  });

  it('reads fingerprint lines as the client does: colons optional, any case, cut at a space, tab or #, of a hash length', () => {
    const w = parseWhitelist(
      [
        '20250101000000',
        'E20250131000000',
        'Nx.y.z',
        '93aba3c489bef9b73e908f42c18aef12bb05c415', // no colons, lower case
        '5C:65:92:17:07:03:1D:D1:32:DF:9F:AA:9E:81:88:0B:BC:F6:97:96#retired', // comment right after
        'F2:13:0A:29:6B:AE:67:49:F8:6A:11:AE:0F:AE:B2:79:9E:8D:90:C6\tbackup',
        'B0:0D:EE:78:13:68:13:B2:3A:B0:B5:0C:9E:35:9C:92', // 16 bytes: an MD5 fingerprint
        'AA:BB', // no hash is two bytes long: the client drops it
        '00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00', // the null hash: dropped
        'AA:BB-SHAKE128', // an algorithm suffix on a digest of the wrong length
        '--',
        '',
      ].join('\n'),
    );
    expect(w.fingerprints).toEqual([
      '93:AB:A3:C4:89:BE:F9:B7:3E:90:8F:42:C1:8A:EF:12:BB:05:C4:15',
      '5C:65:92:17:07:03:1D:D1:32:DF:9F:AA:9E:81:88:0B:BC:F6:97:96',
      'F2:13:0A:29:6B:AE:67:49:F8:6A:11:AE:0F:AE:B2:79:9E:8D:90:C6',
      'B0:0D:EE:78:13:68:13:B2:3A:B0:B5:0C:9E:35:9C:92',
    ]);
  });

  it('reads -SHAKE128 and -RMD160 fingerprints (create_whitelist with CVMFS_HASH_ALGORITHM) with their algorithm', () => {
    const shake128 = '3D:32:4B:0A:DD:20:D3:8E:B4:B7:4E:6B:03:E6:85:97:38:CD:CC:D4-SHAKE128';
    const rmd160 = '1c:a0:7b:6f:bf:32:41:53:84:05:29:24:c2:17:6c:47:f9:ff:2b:da-rmd160 # rotating in';
    const w = parseWhitelist(`20250101000000\nE20250131000000\nNx.y.z\n${shake128}\n${rmd160}\n--\n`);
    expect(w.fingerprints).toEqual([shake128, '1C:A0:7B:6F:BF:32:41:53:84:05:29:24:C2:17:6C:47:F9:FF:2B:DA-RMD160']);
  });

  it('does not drop a CR before the LF, which the client keeps in the line (so the N line no longer matches)', () => {
    expect(() => parseWhitelist(`20250101000000\nE20250131000000\nNx.y.z\r\n${SHA1_FP}\n--\n`)).toThrow(/CRLF/);
  });

  it.each([
    ['timestamp', 'E20250131000000\nNx.y\n--\n'],
    ['E', '20250101000000\nE2025013100\nNx.y\n--\n'],
    ['E', '20250101000000\nE20250231000000\nNx.y\n--\n'],
    ['N', '20250101000000\nE20250131000000\nAA:BB\n--\n'],
  ])('rejects a malformed %s line', (field, text) => {
    expect(() => parseWhitelist(text)).toThrow(ManifestError);
    expect(() => parseWhitelist(text)).toThrow(expect.objectContaining({ field }) as never);
  });
});

describe('expandServerUrl', () => {
  it('substitutes @fqrn@ and @org@ like CVMFS_SERVER_URL', () => {
    expect(expandServerUrl('http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@/', 'atlas.cern.ch')).toBe('http://cvmfs-stratum-one.cern.ch/cvmfs/atlas.cern.ch');
    expect(expandServerUrl('http://s1.example.org/@org@/cvmfs/@fqrn@', 'lhcb.cern.ch')).toBe('http://s1.example.org/lhcb/cvmfs/lhcb.cern.ch');
  });
});

describe('checkRepository', () => {
  const fresh = { revision: 120, publishedAt: minutesAgo(20), whitelistExpires: daysAhead(20) };
  let good: FakeStratum1;
  let other: FakeStratum1;
  let dead: FakeStratum1;
  let failing: FakeStratum1;
  let empty: FakeStratum1;

  beforeAll(async () => {
    good = await startStratum1({
      'sft.cern.ch': fresh,
      'atlas.cern.ch': fresh,
      'alice.cern.ch': { ...fresh, name: 'alice-nightlies.cern.ch' },
      'lhcb.cern.ch': { ...fresh, publishedAt: minutesAgo(3 * 24 * 60) },
      'cms.cern.ch': { ...fresh, whitelistExpires: minutesAgo(90) },
      'gone.cern.ch': { ...fresh, missing: true },
    });
    other = await startStratum1({ 'sft.cern.ch': { ...fresh, revision: 121 } });
    dead = await startStratum1({ 'sft.cern.ch': fresh }, { dead: true });
    failing = await startStratum1({ 'sft.cern.ch': fresh }, { status: 503 });
    empty = await startStratum1({});
  });
  afterAll(async () => {
    await Promise.all([good, other, dead, failing, empty].map((s) => s.stop()));
  });

  // The test servers listen on 127.0.0.1, which the address policy lets through only when allowed.
  const check = (repo: string, servers: string[], extra: Partial<CheckRepositoryOptions> = {}) =>
    checkRepository({ repo, servers, maxAgeSeconds: 6 * 3600, now: NOW, timeoutMs: 2000, allowedHosts: ['127.0.0.1'], ...extra });
  const failed = (r: RepositoryCheck) => {
    if (r.ok) throw new Error(`expected a failure, got ${JSON.stringify(r)}`);
    return r;
  };

  it('passes a fresh repository and reports the server, revision and times', async () => {
    const r = await check('sft.cern.ch', [good.url, other.url], { minRevision: 100 });
    expect(r).toEqual({
      repo: 'sft.cern.ch',
      ok: true,
      server: good.url.replace('@fqrn@', 'sft.cern.ch'),
      revision: 120,
      publishedAt: new Date(Math.floor(minutesAgo(20).getTime() / 1000) * 1000).toISOString(),
      whitelistExpiresAt: '2025-06-22T12:00:00.000Z',
      attempts: [],
    });
    expect(JSON.parse(JSON.stringify(r))).toEqual(r); // survives Temporal's JSON converter
  });

  it('is missing only when every server answers 404', async () => {
    const r = failed(await check('gone.cern.ch', [good.url, empty.url]));
    expect(r.reason).toBe('missing');
    expect(r.attempts.map((a) => a.server)).toEqual([good.url, empty.url].map((u) => u.replace('@fqrn@', 'gone.cern.ch')));
    expect(r.message).toContain('gone.cern.ch');
    expect(r.message).toContain(`${empty.origin}/cvmfs/gone.cern.ch`);
    expect(r.attempts[0].error).toMatch(/HTTP 404/);
  });

  it('fails on a manifest of another repository, naming both', async () => {
    const r = failed(await check('alice.cern.ch', [good.url]));
    expect(r.reason).toBe('wrong-name');
    expect(r.message).toContain('alice.cern.ch');
    expect(r.message).toContain('alice-nightlies.cern.ch');
    expect(r.message).toContain(`${good.origin}/cvmfs/alice.cern.ch`);
  });

  it('fails a manifest older than the allowed age as stale', async () => {
    const r = failed(await check('lhcb.cern.ch', [good.url]));
    expect(r.reason).toBe('stale');
    expect(r.message).toMatch(/lhcb\.cern\.ch.*3 days ago.*allowed 6 h/);
    expect(r.server).toBe(`${good.origin}/cvmfs/lhcb.cern.ch`);
  });

  it('fails a revision below the one the context pins', async () => {
    const r = failed(await check('atlas.cern.ch', [good.url], { minRevision: 200 }));
    expect(r.reason).toBe('too-old-revision');
    expect(r.message).toMatch(/atlas\.cern\.ch.*revision 120.*revision 200 or later/);
  });

  it('fails on an expired whitelist', async () => {
    const r = failed(await check('cms.cern.ch', [good.url]));
    expect(r.reason).toBe('whitelist-expired');
    expect(r.message).toContain('cvmfs_server resign cms.cern.ch');
    expect(r.message).toContain(`${good.origin}/cvmfs/cms.cern.ch`);
  });

  it('fails over past a dead server and a 503 to a good one, recording both', async () => {
    const r = await check('sft.cern.ch', [dead.url, failing.url, other.url]);
    expect(r).toMatchObject({ ok: true, revision: 121, server: `${other.origin}/cvmfs/sft.cern.ch` });
    expect(r.attempts).toEqual([
      { server: `${dead.origin}/cvmfs/sft.cern.ch`, error: NO_ANSWER },
      { server: `${failing.origin}/cvmfs/sft.cern.ch`, error: expect.stringMatching(/HTTP 503/) },
    ]);
  });

  it('is unreachable (and retryable) when no server answers', async () => {
    const r = failed(await check('sft.cern.ch', [dead.url, failing.url]));
    expect(r.reason).toBe('unreachable');
    expect(r.attempts).toHaveLength(2);
    expect(r.message).toContain(dead.origin);
    expect(r.message).toContain(failing.origin);
    expect(isRetryableCvmfsFailure(r.reason)).toBe(true);
  });

  it('is unreachable, not missing, when some servers 404 and others are down', async () => {
    const r = failed(await check('sft.cern.ch', [empty.url, dead.url]));
    expect(r.reason).toBe('unreachable');
  });

  it('substitutes @org@ in the server URL', async () => {
    const r = await check('atlas.cern.ch', [`${good.origin}/@org@/cvmfs/@fqrn@`]);
    expect(r).toMatchObject({ ok: true, server: `${good.origin}/atlas/cvmfs/atlas.cern.ch` });
    expect(good.requests).toEqual(expect.arrayContaining(['/atlas/cvmfs/atlas.cern.ch/.cvmfspublished', '/atlas/cvmfs/atlas.cern.ch/.cvmfswhitelist']));
  });

  it('times out a server that never answers, and fails over past a 200 that is not a manifest', async () => {
    const hang = await startStratum1({}, { hang: true });
    const portal = await startStratum1({}, { text: '<html>Please log in</html>' });
    try {
      const causes: string[] = [];
      const r = await check('sft.cern.ch', [hang.url, portal.url, good.url], { timeoutMs: 200, onNoAnswer: (url, detail) => causes.push(`${url}: ${detail}`) });
      expect(r).toMatchObject({ ok: true, server: `${good.origin}/cvmfs/sft.cern.ch` });
      expect(r.attempts.map((a) => a.error)).toEqual([NO_ANSWER, expect.stringMatching(/malformed: \.cvmfspublished: no "--" line/)]);
      // The cause is told to the operator's log, not to the result.
      expect(causes).toEqual(expect.arrayContaining([`${hang.origin}/cvmfs/sft.cern.ch/.cvmfspublished: timed out after 200 ms`]));
    } finally {
      await Promise.all([hang.stop(), portal.stop()]);
    }
  });

  it('rejects an empty server list as a definition error', async () => {
    await expect(check('sft.cern.ch', [])).rejects.toThrow(/no stratum-1 servers configured for sft\.cern\.ch/);
  });

  it('checks several repositories in parallel, each against its own pin, in order', async () => {
    const rs = await checkRepositories(['sft.cern.ch', 'atlas.cern.ch', 'gone.cern.ch'], {
      servers: [good.url],
      maxAgeSeconds: 3600,
      now: NOW,
      minRevisions: { 'atlas.cern.ch': 500 },
      allowedHosts: ['127.0.0.1'],
    });
    expect(rs.map((r) => [r.repo, r.ok ? 'ok' : r.reason])).toEqual([
      ['sft.cern.ch', 'ok'],
      ['atlas.cern.ch', 'too-old-revision'],
      ['gone.cern.ch', 'missing'],
    ]);
  });
});

describe('cvmfsFailureType', () => {
  it('names an ApplicationFailure type per reason; only unreachable is retryable', () => {
    expect(cvmfsFailureType('missing')).toBe('CvmfsRepositoryMissing');
    expect(cvmfsFailureType('whitelist-expired')).toBe('CvmfsWhitelistExpired');
    expect(cvmfsFailureType('unreachable')).toBe('CvmfsStratum1Unreachable');
    expect(cvmfsFailureType('root-mismatch')).toBe('CvmfsRootPathMismatch');
    const reasons = ['missing', 'wrong-name', 'root-mismatch', 'too-old-revision', 'stale', 'whitelist-expired', 'unreachable'] as const;
    expect(new Set(reasons.map(cvmfsFailureType)).size).toBe(reasons.length);
    expect(reasons.filter(isRetryableCvmfsFailure)).toEqual(['unreachable']);
  });
});
