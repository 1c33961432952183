/**
 * The gateway's outbound address policy (model/address-policy.ts): which addresses are
 * forbidden and in which class, every spelling of a loopback URL that WHATWG URL parsing
 * normalises, the `localhost` names, schemes, and the operator's allow-list (`host` or
 * `host:port`, normalised like URL hosts). The policy as used — by the API at
 * `POST /v1/contexts` and by the worker at connect time — is in security-cvmfs.test.ts.
 */
import { describe, expect, it } from '@jest/globals';
import { AddressPolicy, forbiddenAddressClass, isLocalhostName, parseAllowedHost } from '../model/address-policy.js';

describe('forbiddenAddressClass', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['169.254.169.254', 'link-local'],
    ['100.64.0.1', 'shared (CGNAT)'],
    ['100.127.255.255', 'shared (CGNAT)'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['255.255.255.255', 'reserved'],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['[::1]', 'loopback'],
    ['fc00::1', 'private'],
    ['fd00:ec2::254', 'private'],
    ['fe80::1', 'link-local'],
    ['febf::1', 'link-local'],
    ['ff02::1', 'multicast'],
    // IPv4 inside IPv6: mapped (both spellings), compatible (deprecated), NAT64.
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:a9fe:a9fe', 'link-local'],
    ['::ffff:10.0.0.1', 'private'],
    ['::ffff:0.0.0.0', 'unspecified'],
    ['::7f00:1', 'reserved'],
    ['64:ff9b::a9fe:a9fe', 'link-local'],
    ['64:ff9b::127.0.0.1', 'loopback'],
  ])('%s is %s', (address, cls) => expect(forbiddenAddressClass(address)).toBe(cls));

  it.each(['8.8.8.8', '128.142.1.1', '172.32.0.1', '172.15.255.255', '100.128.0.1', '100.63.255.255', '169.255.0.1', '192.169.0.1', '11.0.0.1', '2001:db8::1', '2606:4700::1111', '::ffff:8.8.8.8', '64:ff9b::808:808'])(
    '%s may be used',
    (address) => expect(forbiddenAddressClass(address)).toBeUndefined(),
  );

  it('judges no host name (those are judged by what they resolve to)', () => {
    expect(forbiddenAddressClass('cvmfs-stratum-one.cern.ch')).toBeUndefined();
    expect(forbiddenAddressClass('')).toBeUndefined();
  });
});

describe('isLocalhostName', () => {
  it.each(['localhost', 'LOCALHOST', 'localhost.', 'a.localhost', 'x.y.localhost.'])('%s is this machine', (h) => expect(isLocalhostName(h)).toBe(true));
  it.each(['localhost.example.org', 'notlocalhost', 'example.org'])('%s is not', (h) => expect(isLocalhostName(h)).toBe(false));
});

describe('AddressPolicy.urlProblem without allowed hosts', () => {
  const policy = new AddressPolicy();
  it.each([
    ['http://127.0.0.1/cvmfs/x', /loopback address \(127\.0\.0\.1\)/],
    // Spellings WHATWG URL parsing normalises to 127.0.0.1 and 0.0.0.0.
    ['http://2130706433/cvmfs/x', /loopback address \(127\.0\.0\.1\)/],
    ['http://0x7f.1/cvmfs/x', /loopback address \(127\.0\.0\.1\)/],
    ['http://127.1/cvmfs/x', /loopback address \(127\.0\.0\.1\)/],
    ['http://017700000001/cvmfs/x', /loopback address \(127\.0\.0\.1\)/],
    ['http://127.0.0.1./cvmfs/x', /loopback address/],
    ['http://0/cvmfs/x', /unspecified address \(0\.0\.0\.0\)/],
    ['http://[::1]:8080/cvmfs/x', /loopback address \(::1\)/],
    ['http://[::]/cvmfs/x', /unspecified address/],
    ['http://[0:0:0:0:0:ffff:7f00:1]/cvmfs/x', /loopback address \(::ffff:7f00:1\)/],
    ['http://[::ffff:169.254.169.254]/latest/meta-data/', /link-local address/],
    ['http://169.254.169.254/latest/meta-data/', /link-local address \(169\.254\.169\.254\)/],
    ['http://10.0.0.1:8080/cvmfs/x', /private address/],
    ['https://192.168.0.10/cvmfs/x', /private address/],
    ['http://100.64.0.1/cvmfs/x', /shared \(CGNAT\) address/],
    ['http://[fd00:ec2::254]/latest/meta-data/', /private address/],
    ['http://[fe80::1]/cvmfs/x', /link-local address/],
    ['http://localhost:8080/cvmfs/x', /names "localhost", this machine/],
    ['http://LOCALHOST./cvmfs/x', /this machine/],
    ['http://metadata.localhost/cvmfs/x', /this machine/],
    ['ftp://s1.example.org/cvmfs/x', /scheme "ftp"; only http and https/],
    ['file:///etc/passwd', /scheme "file"/],
    ['gopher://s1.example.org:70/x', /scheme "gopher"/],
    ['not a url', /is not a URL/],
  ])('%s: refused', (url, why) => expect(policy.urlProblem(url)).toMatch(why));

  it.each(['http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@', 'https://s1.example.org:8443/cvmfs/x', 'http://128.142.1.1/cvmfs/x', 'http://[2001:db8::1]/cvmfs/x', 'http://internal.example/cvmfs/x'])(
    '%s: passes (a name is judged again when it resolves)',
    (url) => expect(policy.urlProblem(url)).toBeUndefined(),
  );
});

describe('AddressPolicy with allowed hosts', () => {
  it('host:port allows that port only; the default port counts as named', () => {
    const p = new AddressPolicy(['127.0.0.1:8000', 's1.site.internal:80']);
    expect(p.urlProblem('http://127.0.0.1:8000/cvmfs/x')).toBeUndefined();
    expect(p.urlProblem('http://127.0.0.1:8001/cvmfs/x')).toMatch(/loopback/);
    expect(p.urlProblem('http://127.0.0.1/cvmfs/x')).toMatch(/loopback/);
    // Another spelling of the same address is the same host.
    expect(p.urlProblem('http://2130706433:8000/cvmfs/x')).toBeUndefined();
    expect(p.isAllowed(new URL('http://s1.site.internal/cvmfs/x'))).toBe(true);
    expect(p.isAllowed(new URL('https://s1.site.internal/cvmfs/x'))).toBe(false); // 443
  });

  it('a host alone allows every port; names match case-insensitively, without the trailing dot', () => {
    const p = new AddressPolicy(['LocalHost.', 'S1.Site.Internal']);
    expect(p.urlProblem('http://localhost:1234/cvmfs/x')).toBeUndefined();
    expect(p.urlProblem('http://localhost./cvmfs/x')).toBeUndefined();
    expect(p.isAllowed(new URL('https://s1.site.internal:8443/'))).toBe(true);
    expect(p.urlProblem('http://a.localhost/cvmfs/x')).toMatch(/this machine/);
  });

  it('takes IPv6 bare, in brackets, and with a port; entries are normalised like URL hosts', () => {
    expect(new AddressPolicy(['::1']).urlProblem('http://[::1]:9/cvmfs/x')).toBeUndefined();
    expect(new AddressPolicy(['[0:0:0:0:0:0:0:1]:9000']).urlProblem('http://[::1]:9000/cvmfs/x')).toBeUndefined();
    expect(new AddressPolicy(['[::1]:9000']).urlProblem('http://[::1]:9001/cvmfs/x')).toMatch(/loopback/);
    expect(new AddressPolicy(['127.1:8000']).urlProblem('http://127.0.0.1:8000/cvmfs/x')).toBeUndefined();
    expect(parseAllowedHost(' cvmfs.example.org:8000 ')).toEqual({ hostname: 'cvmfs.example.org', port: 8000 });
  });

  it('never allows another scheme', () => {
    expect(new AddressPolicy(['127.0.0.1:8000']).urlProblem('ftp://127.0.0.1:8000/x')).toMatch(/scheme "ftp"/);
  });

  it.each(['http://s1.example.org', 'a b', '[::1', 'host:99999', 'host:0', 'user@host', ''])('refuses the entry %j', (entry) => {
    expect(() => new AddressPolicy([entry])).toThrow(/is not a host or host:port/);
  });
});

describe('AddressPolicy.addressProblem (resolved addresses)', () => {
  const policy = new AddressPolicy(['127.0.0.1']);
  it('names the address and its class; the allow-list is about URL hosts, not addresses', () => {
    expect(policy.addressProblem('127.0.0.1')).toBe('127.0.0.1 is a loopback address');
    expect(policy.addressProblem('::ffff:169.254.169.254')).toBe('::ffff:169.254.169.254 is a link-local address');
    expect(policy.addressProblem('93.184.216.34')).toBeUndefined();
  });
});
