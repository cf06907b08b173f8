// The model-based interleaving test (test/fixtures/model.ts) as a long run for `pnpm chaos`:
// the same property as test/core/model.test.ts, with many more runs and a seed of the caller's,
// on a pool large enough that nothing waits and on a pool of 2 where contexts queue for it.
import { DbConnect } from '@context-db/core';
import pg from 'pg';
import { checkModel, createModelTable, type ModelCheck } from '../fixtures/model.js';

export interface ModelRunReport extends ModelCheck {
  readonly pool: number;
  readonly seed: number;
}

/** Run the model `runs` times from `seed` on a pool of `pool`; a counterexample is reported, not thrown. */
export async function runModel(url: string, runs: number, seed: number, pool: number): Promise<ModelRunReport> {
  const appName = `context_db_chaos_${process.pid}_model_${pool}`;
  const table = `chaos_${process.pid}_model_${pool}`;
  const admin = new pg.Pool({ connectionString: url, max: 2, application_name: 'context_db_chaos_admin' });
  await createModelTable(admin, table);
  const db = new DbConnect({
    connectionString: url,
    poolConfig: { max: pool, application_name: appName, connectionTimeoutMillis: 1000 },
  });
  try {
    return { ...(await checkModel({ db, appName, table, admin }, runs, seed)), pool, seed };
  } finally {
    await db.close();
    await admin.query(`DROP TABLE IF EXISTS ${table}`);
    await admin.end();
  }
}
