// Helpers for review tests whose failure mode is a hang: the test must fail, not time out the
// whole file, and a connection stranded by the hang must not keep the process alive.
import { DbConnect } from '@context-db/core';
import { admin, DATABASE_URL, uniqueName } from '../fixtures/db.js';

type Teardown = { teardown(fn: () => unknown): void };

export type Outcome = 'resolved' | 'rejected' | 'hung';

/** How `promise` settles, or 'hung' when it has not after `ms` (a deadlock detector, not a timing assertion). */
export function settlesWithin(promise: Promise<unknown>, ms = 5000): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((resolve) => {
    timer = setTimeout(() => resolve('hung'), ms);
  });
  return Promise.race([
    promise.then(
      () => 'resolved' as const,
      () => 'rejected' as const,
    ),
    hung,
  ]).finally(() => clearTimeout(timer));
}

/**
 * A DbConnect like testDb()'s, whose teardown survives a hang: when `stranded()` says work never
 * ended, the server ends its connections (so no socket keeps the process alive) instead of
 * db.close(), which would wait for them forever.
 */
export function hangSafeDb(t: Teardown, stranded: () => boolean): { db: DbConnect; appName: string } {
  const appName = uniqueName('cdb');
  const db = new DbConnect({ connectionString: DATABASE_URL, poolConfig: { max: 10, application_name: appName } });
  t.teardown(async () => {
    if (!stranded()) return db.close();
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]);
  });
  return { db, appName };
}
