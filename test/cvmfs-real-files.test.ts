/**
 * The stratum-1 readers on real signed files: every `.cvmfspublished` / `.cvmfswhitelist` of
 * ../shared/peer-data/cvmfs (CernVM-FS's own test repositories and EESSI, binary signatures
 * included; see its SOURCES.txt), read with `parseManifest` / `parseWhitelist` and served byte
 * for byte to `checkRepository`. The expected values were read off the files by hand and are
 * what CernVM-FS itself reads from them (manifest.cc Manifest::Load over ParseKeyvalMem;
 * whitelist.cc ParseWhitelist, expiry "exact on hours level"; signature.cc MkFromFingerprint).
 */
import { readdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { checkRepository, parseManifest, parseWhitelist, type CheckRepositoryOptions, type Manifest, type RepositoryCheck, type Whitelist } from '../activities/cvmfs.js';
import { startStratum1, whitelistFile, type FakeStratum1 } from './fakes/stratum1.js';
import { peerDataBytes, peerDataPath } from './peer-data.js';

const real = (file: string): Buffer => peerDataBytes('cvmfs', file);

/** MD5 of the empty path: the root catalog's `R` (cvmfs: `shash::Md5(shash::AsciiPtr(""))`). */
const ROOT = 'd41d8cd98f00b204e9800998ecf8427e';
const at = (iso: string) => new Date(iso);

/** What CernVM-FS reads from each manifest above its `--` line. */
const MANIFESTS: Record<string, Manifest> = {
  // EESSI's scraper test data: current field set, repository names without a domain.
  'eessi-data.cvmfspublished': {
    catalogHash: '7bbb07002bea5370c1e30082b8a955c7de40c21d',
    catalogSize: 19456,
    rootPathHash: ROOT,
    ttlSeconds: 240,
    revision: 13,
    garbageCollectable: true,
    alternativeName: false,
    name: 'data',
    certificateHash: '2f14a4ac9674937f1d335fd9a9bd20f4d06fb49f',
    historyHash: '738301fed55210e7bf40511c466eb9f93e05e296',
    publishedAt: at('2022-11-22T16:14:44Z'), // T1669133684
    metainfoHash: '85e4f386da0d5d77c7f66cf2f58e10951f24b653',
    reflogHash: '8d2f044f4cb73575373e6ba2fd3438b5679ec99e',
    extra: {},
  },
  'eessi-test.cvmfspublished': {
    catalogHash: 'fff38786a197f8ffb61e21853049a95dd79dbd2b',
    catalogSize: 59392,
    rootPathHash: ROOT,
    ttlSeconds: 240,
    revision: 852,
    garbageCollectable: true,
    alternativeName: false,
    name: 'test',
    certificateHash: 'd15a3f7ff8c3674c47b2aefd2b1093cf954ead17',
    historyHash: '1a1db1c42ae91d717664d4df680d0344e2eafb22',
    publishedAt: at('2023-08-29T12:15:54Z'), // T1693311354
    metainfoHash: '85e4f386da0d5d77c7f66cf2f58e10951f24b653',
    reflogHash: '651852aac591e7f41c2f1903f7e8b464558673e3',
    extra: {},
  },
  // A 2.1-era repository: no A, M or Y line.
  'legacy_aufs.cern.ch.cvmfspublished': {
    catalogHash: '6ed3d49a5c64f21f36936ab350d49aaf57585b9a',
    catalogSize: 14336,
    rootPathHash: ROOT,
    ttlSeconds: 900,
    revision: 2,
    garbageCollectable: false,
    name: 'legacy_aufs.cern.ch',
    certificateHash: '65133968f581abad1e75489c92a634e44929cbd7',
    historyHash: '365d5083b27d67e2caeff6d66e5fe3f2d104a6bd',
    publishedAt: at('2015-10-21T11:55:15Z'), // T1445428515
    extra: {},
  },
  // 2.0-era repositories: alphabetical fields, no B/G/A/H, an all-zero L (micro catalog) line.
  'migrationtest01.cern.ch.cvmfspublished': {
    catalogHash: 'aa65ca9b8ffd9bcd33fdd5d50b7c3894e9c1533c',
    rootPathHash: ROOT,
    ttlSeconds: 3600,
    revision: 6,
    name: 'migrationtest01.cern.ch',
    certificateHash: 'd82e440ce1955ca4291cac12fba8f6077e855acf',
    publishedAt: at('2014-08-25T14:59:43Z'), // T1408978783
    extra: { L: '0000000000000000000000000000000000000000' },
  },
  // A nested catalog's own manifest: R is the MD5 of "/nested_mountpoint_out_of_sync".
  'migrationtest01.cern.ch-nested.cvmfspublished': {
    catalogHash: '1b3640ed5844ad50a8c611d516ad67bedc466bda',
    rootPathHash: '9dfbeb07ec1696e70662d0e3913894c3',
    ttlSeconds: 3600,
    revision: 3,
    name: 'migrationtest01.cern.ch',
    certificateHash: '7fc7fe0d52c633bd2269b5c17a2d964d2aedc905',
    publishedAt: at('2014-08-25T13:04:39Z'), // T1408971879
    extra: { L: '0000000000000000000000000000000000000000' },
  },
  'testmigration.cern.ch-r2.cvmfspublished': {
    catalogHash: '713ca8a74dd20682338da781e314ac2b8ce883e4',
    rootPathHash: ROOT,
    ttlSeconds: 3600,
    revision: 2,
    name: 'testmigration.cern.ch',
    certificateHash: 'bd46e502db6e41c972be183eb2bbac2110515e1f',
    publishedAt: at('2014-04-09T09:39:55Z'), // T1397036395
    extra: { L: '0000000000000000000000000000000000000000' },
  },
  'testmigration.cern.ch-r3.cvmfspublished': {
    catalogHash: 'e1db87c42de2501a3999b6fbbfdf9674ad968e71',
    rootPathHash: ROOT,
    ttlSeconds: 3600,
    revision: 3,
    name: 'testmigration.cern.ch',
    certificateHash: 'bd46e502db6e41c972be183eb2bbac2110515e1f',
    publishedAt: at('2014-04-09T09:48:09Z'), // T1397036889
    extra: { L: '0000000000000000000000000000000000000000' },
  },
  // Revision 3's nested catalog at /dir5/ndir5 (R = MD5 of that path), last changed in revision 2.
  'testmigration.cern.ch-r3-nested.cvmfspublished': {
    catalogHash: '9228a3182f8b26a3183055b65030cab451ed96c9',
    rootPathHash: '535a03fa89dfc71391f425e5618c5553',
    ttlSeconds: 3600,
    revision: 2,
    name: 'testmigration.cern.ch',
    certificateHash: 'bd46e502db6e41c972be183eb2bbac2110515e1f',
    publishedAt: at('2014-04-09T09:48:09Z'), // T1397036889
    extra: { L: '0000000000000000000000000000000000000000' },
  },
};

/** What CernVM-FS reads from each whitelist: the `E` time cut to the hour, SHA-1 fingerprints. */
const WHITELISTS: Record<string, Whitelist> = {
  'legacy_aufs.cern.ch.cvmfswhitelist': {
    createdAt: at('2015-10-21T11:55:13Z'),
    expiresAt: at('2015-11-20T11:00:00Z'), // E20151120115513
    name: 'legacy_aufs.cern.ch',
    fingerprints: ['93:AB:A3:C4:89:BE:F9:B7:3E:90:8F:42:C1:8A:EF:12:BB:05:C4:15'],
    pkcs7: false,
    caChain: false,
  },
  'migrationtest01.cern.ch.cvmfswhitelist': {
    createdAt: at('2014-08-25T04:44:02Z'),
    expiresAt: at('2014-09-25T04:00:00Z'), // E20140925044402
    name: 'migrationtest01.cern.ch',
    fingerprints: ['5C:65:92:17:07:03:1D:D1:32:DF:9F:AA:9E:81:88:0B:BC:F6:97:96'],
    pkcs7: false,
    caChain: false,
  },
  'testmigration.cern.ch.cvmfswhitelist': {
    createdAt: at('2014-04-09T09:34:11Z'),
    expiresAt: at('2014-05-09T09:00:00Z'), // E20140509093411
    name: 'testmigration.cern.ch',
    fingerprints: ['F2:13:0A:29:6B:AE:67:49:F8:6A:11:AE:0F:AE:B2:79:9E:8D:90:C6'],
    pkcs7: false,
    caChain: false,
  },
};

/** A real file with the text above its `--` line changed and everything from `--` on kept byte for byte. */
function editHead(file: Buffer, edit: (head: string) => string): Buffer {
  const sep = file.indexOf('\n--\n');
  return Buffer.concat([Buffer.from(edit(file.subarray(0, sep).toString('latin1')), 'latin1'), file.subarray(sep)]);
}

describe('the real files', () => {
  it('are all covered here, so a file added to peer data is read too', () => {
    const files = readdirSync(peerDataPath('cvmfs')).filter((f) => f.endsWith('.cvmfspublished') || f.endsWith('.cvmfswhitelist'));
    expect(files.sort()).toEqual([...Object.keys(MANIFESTS), ...Object.keys(WHITELISTS)].sort());
  });

  it.each(Object.entries(MANIFESTS))('parseManifest reads %s as CernVM-FS does', (file, expected) => {
    expect(parseManifest(real(file))).toEqual(expected);
  });

  it.each(Object.entries(WHITELISTS))('parseWhitelist reads %s as CernVM-FS does', (file, expected) => {
    expect(parseWhitelist(real(file))).toEqual(expected);
  });

  it('reads the EESSI manifests whose signature bytes were re-encoded upstream, from bytes or from UTF-8 text', () => {
    for (const file of ['eessi-data.cvmfspublished', 'eessi-test.cvmfspublished']) {
      // The re-encoding left U+FFFD (EF BF BD) all over the signature; the head above `--` is intact.
      expect(real(file).includes(Buffer.from([0xef, 0xbf, 0xbd]))).toBe(true);
      expect(parseManifest(real(file).toString('utf8'))).toEqual(MANIFESTS[file]);
    }
  });
});

describe('parseWhitelist on a real whitelist re-signed with another hash algorithm', () => {
  // What cvmfs_server's create_whitelist writes for a repository with CVMFS_HASH_ALGORITHM=shake128
  // or rmd160: the digest as colon-separated pairs, then the algorithm (`swissknife hash -f`,
  // shash::Digest::ToFingerprint); a resign copies that line. MkFromFingerprint
  // reads it with its algorithm; the whitelist's signature no longer matches, which a reader
  // that does not verify signatures cannot tell.
  const shake128 = '3D:32:4B:0A:DD:20:D3:8E:B4:B7:4E:6B:03:E6:85:97:38:CD:CC:D4-SHAKE128';
  const rmd160 = '1C:A0:7B:6F:BF:32:41:53:84:05:29:24:C2:17:6C:47:F9:FF:2B:DA-RMD160';

  it('keeps a -SHAKE128 or -RMD160 fingerprint, with its algorithm', () => {
    const legacy = real('legacy_aufs.cern.ch.cvmfswhitelist');
    const w = parseWhitelist(editHead(legacy, (head) => head.replace(/\n93:AB:.*$/, `\n${shake128}\n${rmd160} # next key`)));
    expect(w.fingerprints).toEqual([shake128, rmd160]);
    expect(w.expiresAt).toEqual(WHITELISTS['legacy_aufs.cern.ch.cvmfswhitelist'].expiresAt);
  });
});

describe('checkRepository against a stratum-1 serving the real bytes', () => {
  let s1: FakeStratum1;
  let nested: FakeStratum1;
  let older: FakeStratum1;

  // The EESSI scraper data has manifests only; their whitelists are built in the CVMFS format.
  const eessiWhitelist = (name: string, publishedAt: Date) =>
    whitelistFile(name, { revision: 0, publishedAt, whitelistExpires: new Date(publishedAt.getTime() + 20 * 86_400_000) });

  beforeAll(async () => {
    s1 = await startStratum1({
      'legacy_aufs.cern.ch': { published: real('legacy_aufs.cern.ch.cvmfspublished'), whitelist: real('legacy_aufs.cern.ch.cvmfswhitelist') },
      'migrationtest01.cern.ch': { published: real('migrationtest01.cern.ch.cvmfspublished'), whitelist: real('migrationtest01.cern.ch.cvmfswhitelist') },
      'testmigration.cern.ch': { published: real('testmigration.cern.ch-r3.cvmfspublished'), whitelist: real('testmigration.cern.ch.cvmfswhitelist') },
      data: { published: real('eessi-data.cvmfspublished'), whitelist: eessiWhitelist('data', MANIFESTS['eessi-data.cvmfspublished'].publishedAt) },
      test: { published: real('eessi-test.cvmfspublished'), whitelist: eessiWhitelist('test', MANIFESTS['eessi-test.cvmfspublished'].publishedAt) },
      // A repository's files served under another repository's name.
      'legacy.cern.ch': { published: real('legacy_aufs.cern.ch.cvmfspublished'), whitelist: real('legacy_aufs.cern.ch.cvmfswhitelist') },
    });
    // A stratum-1 that serves a nested catalog's manifest at the repository's base.
    nested = await startStratum1({
      'migrationtest01.cern.ch': { published: real('migrationtest01.cern.ch-nested.cvmfspublished'), whitelist: real('migrationtest01.cern.ch.cvmfswhitelist') },
      'testmigration.cern.ch': { published: real('testmigration.cern.ch-r3-nested.cvmfspublished'), whitelist: real('testmigration.cern.ch.cvmfswhitelist') },
    });
    // One that has not replicated revision 3 yet.
    older = await startStratum1({
      'testmigration.cern.ch': { published: real('testmigration.cern.ch-r2.cvmfspublished'), whitelist: real('testmigration.cern.ch.cvmfswhitelist') },
    });
  });
  afterAll(async () => {
    await Promise.all([s1, nested, older].map((s) => s.stop()));
  });

  const check = (repo: string, servers: string[], now: string, extra: Partial<CheckRepositoryOptions> = {}) =>
    checkRepository({ repo, servers, now: at(now), maxAgeSeconds: 6 * 3600, timeoutMs: 2000, allowedHosts: ['127.0.0.1'], ...extra });
  const failed = (r: RepositoryCheck) => {
    if (r.ok) throw new Error(`expected a failure, got ${JSON.stringify(r)}`);
    return r;
  };

  it('serves the files byte for byte', async () => {
    const base = s1.url.replace('@fqrn@', 'legacy_aufs.cern.ch');
    for (const [path, file] of [
      ['.cvmfspublished', 'legacy_aufs.cern.ch.cvmfspublished'],
      ['.cvmfswhitelist', 'legacy_aufs.cern.ch.cvmfswhitelist'],
    ]) {
      const got = Buffer.from(await (await fetch(`${base}/${path}`)).arrayBuffer());
      expect(got.equals(real(file))).toBe(true);
    }
  });

  it.each([
    ['legacy_aufs.cern.ch', '2015-10-21T12:30:00Z', 2, '2015-10-21T11:55:15.000Z', '2015-11-20T11:00:00.000Z'],
    ['migrationtest01.cern.ch', '2014-08-25T15:30:00Z', 6, '2014-08-25T14:59:43.000Z', '2014-09-25T04:00:00.000Z'],
    ['testmigration.cern.ch', '2014-04-09T10:00:00Z', 3, '2014-04-09T09:48:09.000Z', '2014-05-09T09:00:00.000Z'],
    ['data', '2022-11-22T17:00:00Z', 13, '2022-11-22T16:14:44.000Z', '2022-12-12T16:00:00.000Z'],
    ['test', '2023-08-29T13:00:00Z', 852, '2023-08-29T12:15:54.000Z', '2023-09-18T12:00:00.000Z'],
  ])('passes %s shortly after it was published', async (repo, now, revision, publishedAt, whitelistExpiresAt) => {
    expect(await check(repo, [s1.url], now)).toEqual({
      repo,
      ok: true,
      server: s1.url.replace('@fqrn@', repo),
      revision,
      publishedAt,
      whitelistExpiresAt,
      attempts: [],
    });
  });

  it('expires the real whitelist at the hour of its E line, as the client does (E20151120115513: 11:00, not 11:55:13)', async () => {
    const month = { maxAgeSeconds: 40 * 86_400 };
    expect(await check('legacy_aufs.cern.ch', [s1.url], '2015-11-20T10:59:59Z', month)).toMatchObject({ ok: true });
    const r = failed(await check('legacy_aufs.cern.ch', [s1.url], '2015-11-20T11:00:00Z', month));
    expect(r.reason).toBe('whitelist-expired');
    expect(r.message).toContain('expired at 2015-11-20T11:00:00.000Z');
  });

  it('fails a revision below the pin on a stratum-1 that has not replicated it, and passes on one that has', async () => {
    const r = failed(await check('testmigration.cern.ch', [older.url], '2014-04-09T10:00:00Z', { minRevision: 3 }));
    expect(r.reason).toBe('too-old-revision');
    expect(r.message).toMatch(/serves revision 2 but the context pins revision 3 or later/);
    expect(await check('testmigration.cern.ch', [s1.url], '2014-04-09T10:00:00Z', { minRevision: 3 })).toMatchObject({ ok: true, revision: 3 });
  });

  it('fails a real manifest served under another repository name, naming the one it is for', async () => {
    const r = failed(await check('legacy.cern.ch', [s1.url], '2015-10-21T12:30:00Z'));
    expect(r.reason).toBe('wrong-name');
    expect(r.message).toContain('is the manifest of "legacy_aufs.cern.ch"');
  });

  it.each([
    ['migrationtest01.cern.ch', '2014-08-25T13:30:00Z', '9dfbeb07ec1696e70662d0e3913894c3'],
    ['testmigration.cern.ch', '2014-04-09T10:00:00Z', '535a03fa89dfc71391f425e5618c5553'],
  ])('fails %s when the stratum-1 serves a nested catalog’s manifest at the base, which clients refuse', async (repo, now, rootPathHash) => {
    const r = failed(await check(repo, [nested.url, s1.url], now));
    expect(r).toMatchObject({ reason: 'root-mismatch', server: nested.url.replace('@fqrn@', repo) });
    expect(r.message).toContain(repo);
    expect(r.message).toContain(`R${rootPathHash}`);
    expect(r.message).toContain('nested catalog');
  });

  it('fails over past a stratum-1 whose copy of a real manifest has CRLF line ends, which the client cannot read', async () => {
    // ParseKeyvalMem splits at '\n' only: "--\r" is no separator and "Nlegacy_aufs.cern.ch\r"
    // no match for the name, so the client refuses this copy (and switches stratum-1).
    const file = real('legacy_aufs.cern.ch.cvmfspublished');
    const sep = file.indexOf('\n--\n');
    const published = Buffer.concat([
      Buffer.from(file.subarray(0, sep).toString('latin1').replaceAll('\n', '\r\n'), 'latin1'),
      Buffer.from('\r\n--\r\n'),
      file.subarray(sep + 4),
    ]);
    expect(() => parseManifest(published)).toThrow(/CRLF/);
    const crlf = await startStratum1({ 'legacy_aufs.cern.ch': { published, whitelist: real('legacy_aufs.cern.ch.cvmfswhitelist') } });
    try {
      const r = await check('legacy_aufs.cern.ch', [crlf.url, s1.url], '2015-10-21T12:30:00Z');
      expect(r).toMatchObject({ ok: true, server: s1.url.replace('@fqrn@', 'legacy_aufs.cern.ch'), revision: 2 });
      expect(r.attempts).toEqual([{ server: crlf.url.replace('@fqrn@', 'legacy_aufs.cern.ch'), error: expect.stringMatching(/malformed: \.cvmfspublished: .*CRLF/) }]);
    } finally {
      await crlf.stop();
    }
  });
});
