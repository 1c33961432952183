/** An OpenSSH public key line whose blob names its own type, as ssh-keygen writes it (test data, no real key). */
export function sshKey(type: string, comment = 'user@host'): string {
  const str = (s: string | Buffer) => {
    const b = Buffer.from(s);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    return Buffer.concat([len, b]);
  };
  return `${type} ${Buffer.concat([str(type), str(Buffer.alloc(32, 7))]).toString('base64')} ${comment}`;
}
