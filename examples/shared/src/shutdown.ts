// The shutdown sequence the READMEs describe, as the example servers run it on SIGTERM (and
// Ctrl-C): stop accepting, let the requests in flight finish and commit, then close the database.
import type { Server } from 'node:http';
import type { DbConnect } from '@context-db/core';

export interface ShutdownOptions {
  /** The HTTP server under the app (Fastify's `app.server`, the one Express or Koa listen on). */
  readonly server: Server;
  /** Stops accepting and resolves once the requests in flight are answered: `app.close()`, `server.close()`. */
  readonly stop: () => Promise<void>;
  readonly db: DbConnect;
  /** How long requests in flight may take before their connections are cut; default 10 s. */
  readonly graceMs?: number;
}

/**
 * On SIGTERM, SIGINT or SIGHUP: `stop()` (no new connections, requests in flight run to their
 * end and commit), closing keep-alive connections as their requests end, then `db.close()`.
 * Requests still running after `graceMs`, or at a second signal, have their connections cut:
 * their clients are gone, so their statements are cancelled and their transactions rolled back,
 * and the database closes right after.
 *
 * @example
 * ```ts
 * const server = app.listen(3000);
 * closeOnSignals({ server, stop: () => new Promise((done) => server.close(() => done())), db });
 * ```
 */
export function closeOnSignals({ server, stop, db, graceMs = 10_000 }: ShutdownOptions): void {
  let stopping: Promise<void> | undefined;
  const shutdown = (signal: NodeJS.Signals): void => {
    if (stopping !== undefined) {
      console.log(`${signal} again: cutting the requests in flight`);
      server.closeAllConnections();
      return;
    }
    console.log(`${signal}: finishing the requests in flight, then closing the database`);
    // close() closes only the keep-alive connections idle at the time; the others fall idle as
    // their requests end, and would hold it open for their whole keepAliveTimeout.
    const sweep = setInterval(() => server.closeIdleConnections(), 50);
    const grace = setTimeout(() => server.closeAllConnections(), graceMs);
    stopping = stop()
      .finally(() => {
        clearInterval(sweep);
        clearTimeout(grace);
      })
      .then(() => db.close())
      .then(
        () => console.log('closed'),
        (err: unknown) => {
          console.error(err);
          process.exitCode = 1;
        },
      );
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  process.on('SIGHUP', shutdown);
  // A closed terminal fails every write to it (EIO): the shutdown goes on without its log lines
  // rather than ending on an unhandled 'error' event.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});
}
