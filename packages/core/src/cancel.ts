import net from 'node:net';
import type { PoolClient } from 'pg';

/** What became of a cancel request (see `cancelBackend`). */
export type CancelOutcome =
  /** The server read it and closed the connection: its signal reached the backend already. */
  | 'delivered'
  /** It never left this process (no address, no key, connection refused): no signal will come. */
  | 'not-sent'
  /** Sent, but the server did not confirm in time: a signal may still arrive later. */
  | 'unknown';

// The CancelRequest message: length 16, the code 1234 5678, then the backend's process id and
// secret key, exactly as libpq's PQcancel sends it.
const CANCEL_REQUEST_CODE = 80877102;

interface Backend {
  readonly processID?: unknown;
  readonly secretKey?: unknown;
  readonly host?: unknown;
  readonly port?: unknown;
  readonly connection?: { readonly stream?: unknown };
}

/** Where the client's server listens: the socket's own peer first, so a DNS name with several addresses is no guess. */
function addressOf(backend: Backend): net.NetConnectOpts | undefined {
  const stream = backend.connection?.stream;
  if (stream instanceof net.Socket && typeof stream.remoteAddress === 'string' && stream.remotePort !== undefined) {
    return { host: stream.remoteAddress, port: stream.remotePort };
  }
  const { host, port } = backend;
  if (typeof host !== 'string' || typeof port !== 'number') return undefined;
  return host.startsWith('/') ? { path: `${host}/.s.PGSQL.${port}` } : { host, port };
}

/**
 * Ask PostgreSQL to cancel the statement `client`'s backend is running (its CancelRequest, sent
 * on a connection of its own, like libpq's `PQcancel`). A backend running nothing ignores it.
 * Resolves once the server has closed that connection (`'delivered'`: the backend has been
 * signalled, so a statement sent after this is safe from it), or says why it cannot tell;
 * never rejects.
 *
 * The request goes unencrypted, as libpq's always did: PostgreSQL reads it before any
 * authentication or TLS requirement applies.
 *
 * @example
 * ```ts
 * const running = client.query('SELECT pg_sleep(60)');
 * await cancelBackend(client); // running rejects with SQLSTATE 57014
 * ```
 */
export function cancelBackend(client: PoolClient, timeoutMs = 5000): Promise<CancelOutcome> {
  const backend = client as unknown as Backend;
  const { processID, secretKey } = backend;
  const address = addressOf(backend);
  if (typeof processID !== 'number' || typeof secretKey !== 'number' || address === undefined) {
    return Promise.resolve('not-sent');
  }
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(CANCEL_REQUEST_CODE, 4);
  packet.writeInt32BE(processID, 8);
  packet.writeInt32BE(secretKey, 12);
  return new Promise((resolve) => {
    let sent = false;
    const socket = net.connect(address);
    const done = (outcome: CancelOutcome): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => done(sent ? 'unknown' : 'not-sent'), timeoutMs);
    timer.unref();
    socket.setNoDelay(true);
    socket.once('connect', () => {
      sent = true;
      socket.end(packet);
    });
    // The server answers nothing: it reads the request, signals the backend, and hangs up.
    socket.on('data', () => {});
    socket.once('close', () => done(sent ? 'delivered' : 'not-sent'));
    socket.once('error', () => done(sent ? 'unknown' : 'not-sent'));
  });
}
