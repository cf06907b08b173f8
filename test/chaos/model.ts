// The model-based interleaving test (test/fixtures/model.ts) as a long run for `pnpm chaos`:
// the same property as test/core/model.test.ts, with many more runs and a seed of the caller's.
import { DbConnect } from '@context-db/core';
import fc from 'fast-check';
import pg from 'pg';
import { createModelTable, modelProperty } from '../fixtures/model.js';

export interface ModelRunReport {
  readonly runs: number;
  readonly seed: number;
  readonly seconds: number;
  /** fast-check's report with the shrunk counterexample and the model's violations, if any. */
  readonly failure: string | undefined;
}

/** Run the model `runs` times from `seed` on a pool of its own; never throws for a counterexample. */
export async function runModel(url: string, runs: number, seed: number): Promise<ModelRunReport> {
  const appName = `context_db_chaos_${process.pid}_model`;
  const table = `chaos_${process.pid}_model`;
  const admin = new pg.Pool({ connectionString: url, max: 2, application_name: 'context_db_chaos_admin' });
  await createModelTable(admin, table);
  const db = new DbConnect({ connectionString: url, poolConfig: { max: 16, application_name: appName } });
  const started = Date.now();
  try {
    const result = await fc.check(modelProperty({ db, appName, table, admin }), { numRuns: runs, seed });
    const error = result.errorInstance instanceof Error ? result.errorInstance.message : String(result.errorInstance);
    return {
      runs: result.numRuns,
      seed,
      seconds: (Date.now() - started) / 1000,
      failure: result.failed ? `${fc.defaultReportMessage(result) ?? 'the property failed'}\n${error}` : undefined,
    };
  } finally {
    await db.close();
    await admin.query(`DROP TABLE IF EXISTS ${table}`);
    await admin.end();
  }
}
