// What the variant apps share: the server handle the bench child controls, and the hand-written
// transaction every "plain" variant runs in its insert handler.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type pg from 'pg';

/** A variant app listening on a loopback port. */
export interface BenchServer {
  readonly port: number;
  close(): Promise<void>;
}

/** The insert route's JSON body. */
export interface InsertBody {
  readonly text: string;
}

export interface InsertResult {
  readonly id: number | undefined;
}

/** Listen on 127.0.0.1 on a free port. */
export async function listenLoopback(server: Server): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return (server.address() as AddressInfo).port;
}

/** Stop accepting, drop keep-alive connections, and wait for the server to close. */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/**
 * What an application does without a library: take a connection, BEGIN, INSERT, COMMIT,
 * release; ROLLBACK on error (and discard the connection if even that fails).
 */
export async function insertHandWritten(pool: pg.Pool, sql: string, text: string): Promise<InsertResult> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('BEGIN');
    const { rows } = await client.query<{ id: number }>(sql, [text]);
    await client.query('COMMIT');
    return { id: rows[0]?.id };
  } catch (err) {
    try {
      await client.query('ROLLBACK');
    } catch {
      broken = true;
    }
    throw err;
  } finally {
    client.release(broken);
  }
}
