// Model-based interleaving test (DESIGN.md "Rules that users rely on"): random programs of up to
// three contexts, each issuing inserts, commits, rollbacks, closes, atomic blocks in every mode,
// runInNewCtx and its finish by every outcome (or a client abort), interleaved by fast-check's
// scheduler on the real PostgreSQL, and checked against the model in test/fixtures/model.ts.
// CI runs a fixed seed; CONTEXT_DB_MODEL_RUNS and CONTEXT_DB_MODEL_SEED change the run (`pnpm
// chaos` runs it longer through test/chaos/model.ts).
import t from 'tap';
import { admin, testDb, uniqueName } from '../fixtures/db.js';
import { check, checkModel, createModelTable, type InsertRec, type OpRec, type Trace } from '../fixtures/model.js';

const numRuns = Number(process.env.CONTEXT_DB_MODEL_RUNS ?? 500);
const seed = Number(process.env.CONTEXT_DB_MODEL_SEED ?? 20261125);

// With a pool of 16 no context waits for a connection; with 2, contexts and runInNewCtx bodies
// queue for the pool, so finishes and aborts also land while a session waits for its connection
// (an acquire that times out fails its work with POOL_EXHAUSTED, which the model allows).
for (const { max, runs } of [
  { max: 16, runs: numRuns },
  { max: 2, runs: Math.max(1, Math.round(numRuns / 4)) },
]) {
  t.test(
    `interleaved contexts on a pool of ${max} agree with the model: reported work committed exactly by its outcome, late work refused, nothing leaked (${runs} runs, seed ${seed})`,
    async (t) => {
      const { db, appName } = testDb(t, { max, connectionTimeoutMillis: 1000 });
      const table = uniqueName('model');
      await createModelTable(admin, table);
      t.teardown(() => admin.query(`DROP TABLE IF EXISTS ${table}`));
      const result = await checkModel({ db, appName, table, admin }, runs, seed);
      t.comment(`${result.runs} runs in ${result.seconds.toFixed(1)} s`);
      if (result.failure !== undefined) t.fail(result.failure);
      else t.pass('every run agreed with the model');
    },
  );
}

t.test(
  'the model flags missing committed work, late work that succeeded and a transaction two contexts share',
  async (t) => {
    const end = (ctx: number, outcome: 200 | 404, call: number): OpRec => ({
      ctx,
      op: { k: 'end', outcome },
      label: `c${ctx} end(${outcome})`,
      call,
      settle: call + 10,
      ok: true,
      inserts: [],
    });
    const insert = (value: string, ctx: number, call: number, txid: string): InsertRec => ({
      value,
      ctx,
      owner: undefined,
      call,
      settle: call + 1,
      ok: true,
      txid,
      pid: 1,
    });
    const committed: Trace = { contexts: 1, ops: [end(0, 200, 3)], inserts: [insert('a', 0, 1, '10')] };
    t.same(check(committed, new Set(['a'])), [], 'work committed by a 200 and in the table agrees');
    t.match(check(committed, new Set()), [/expected committed/], 'the same work missing is flagged');
    const rolledBack: Trace = { contexts: 1, ops: [end(0, 404, 3)], inserts: [insert('a', 0, 1, '10')] };
    t.match(check(rolledBack, new Set(['a'])), [/expected rolled back/], 'work of a 404 in the table is flagged');
    const late: Trace = { contexts: 1, ops: [end(0, 200, 3)], inserts: [insert('a', 0, 5, '10')] };
    t.match(
      check(late, new Set(['a'])),
      [/after its context's finish began/],
      'work sent after the finish began that succeeded',
    );
    const shared: Trace = {
      contexts: 2,
      ops: [end(0, 200, 5), end(1, 200, 6)],
      inserts: [insert('a', 0, 1, '10'), insert('b', 1, 2, '10')],
    };
    t.match(check(shared, new Set(['a', 'b'])), [/ran in transaction 10 of a/], 'two contexts in one transaction');
  },
);
