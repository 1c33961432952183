/** Contract target: the EC2 adapter on a real moto server. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { CloudAdapter } from '../../clouds/contract.js';
import { createEc2Cloud } from '../../clouds/ec2.js';
import type { Ec2CloudConfig } from '../../model/clouds-config.js';
import { startMotoPeer } from '../peers/moto.js';
import type { Target } from './types.js';

/** A local HTTP server that answers every EC2 call with one error; counts the calls. */
export interface FakeEc2 {
  endpoint: string;
  requests(): number;
  close(): Promise<void>;
}

/**
 * A FAKE EC2 endpoint, not a peer: it answers every request with the EC2 XML error
 * `code` (as AWS words it) and HTTP `status`. It stands in where moto cannot help:
 * throttling (`RequestLimitExceeded`, which moto never sends), a cloud without some call
 * (`InvalidAction`), and proving that a request was never sent.
 */
export async function startFakeEc2(code = 'RequestLimitExceeded', status = 503, message = 'Request limit exceeded.'): Promise<FakeEc2> {
  let requests = 0;
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${code}</Code><Message>${message}</Message></Error></Errors><RequestID>x</RequestID></Response>`;
  const server = http.createServer((req, res) => {
    requests++;
    // Read the whole request first, as AWS does, so the client never sees a reset.
    req.resume();
    req.on('end', () => res.writeHead(status, { 'content-type': 'text/xml' }).end(body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests: () => requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export const ec2Target: Target = {
  name: 'ec2',
  async make() {
    const peer = await startMotoPeer();
    Object.assign(process.env, peer.env);
    const opened: CloudAdapter[] = [];
    const fakes: FakeEc2[] = [];
    const open = (cfg: Ec2CloudConfig = peer.cloudConfig) => {
      const adapter = createEc2Cloud(cfg);
      opened.push(adapter);
      return adapter;
    };
    return {
      adapter: open(),
      image: 'cernvm4-micro-2023.06',
      runningWithinMs: 10_000,
      reopen: async () => open(),
      async throttled() {
        const fake = await startFakeEc2();
        fakes.push(fake);
        return open({ ...peer.cloudConfig, endpoint: fake.endpoint });
      },
      async cleanup() {
        for (const a of opened) await a.close?.();
        for (const f of fakes) await f.close();
        await peer.stop();
      },
    };
  },
};
