// The load mix against each framework: every response agrees with the database, nothing leaks.
// `pnpm chaos --requests N` runs the same with a large count (test/chaos/run.ts).
import t from 'tap';
import { formatReport, frameworks, startMix } from '../fixtures/chaos.js';
import { admin, createDeferredTable, testDb } from '../fixtures/db.js';

const REQUESTS = 300;

for (const framework of frameworks) {
  t.test(`${framework}: ${REQUESTS} mixed requests, every status agrees with the database`, async (t) => {
    const { db, appName } = testDb(t, { max: 8 });
    const table = await createDeferredTable(t);
    const mix = await startMix(framework, { db, appName, table, admin });
    t.teardown(() => mix.server.close());

    const report = await mix.run({
      requests: REQUESTS,
      concurrency: 24,
      seed: 7,
    });
    t.comment(formatReport(report));
    // Each kind was exercised, so the zeros below mean something.
    for (const kind of [
      'ok',
      'throw',
      'deferred',
      'kill',
      'killSwallowed',
      'fanout',
      'abort',
      'abortRunning',
      'deadline',
      'gated',
    ]) {
      t.ok(Object.values(report.outcomes[kind] ?? {}).reduce((a, b) => a + b, 0) > 0, `${kind} was sent`);
    }
    t.ok((report.outcomes.abort?.aborted ?? 0) > 0, 'some requests were aborted by the client');
    t.equal(report.disagreements, 0, 'no status/database disagreement');
    t.equal(report.halfWritten, 0, 'no key half written');
    t.ok(report.resumedByRequest > 0, 'some gated requests were resumed from another request');
    t.equal(report.unexpectedStatus, 0, 'every kind got its status');
    t.equal(report.hangs, 0, 'no request hung');
    t.equal(report.leaks, 0, 'no cross-request leak');
    t.equal(report.checkedOut, 0, 'no connection left checked out');
    t.equal(report.idleInTransaction, 0, 'no session idle in transaction');
    t.ok((report.outcomes.abortRunning?.aborted ?? 0) > 0, 'some clients left while a statement ran');
    t.equal(report.uncancelled, 0, 'every statement of a client that left, or past its deadline, was cancelled');
  });
}

t.test('the checker catches a route whose status lies about the database', async (t) => {
  const { db, appName } = testDb(t, { max: 4 });
  const table = await createDeferredTable(t);
  const mix = await startMix('fastify', { db, appName, table, admin });
  t.teardown(() => mix.server.close());
  const report = await mix.run({
    requests: 20,
    concurrency: 4,
    weights: {
      lie: 1,
      ok: 1,
      throw: 0,
      status4xx: 0,
      status5xx: 0,
      thrown4xx: 0,
      deferred: 0,
      abort: 0,
      kill: 0,
      killSwallowed: 0,
      fanout: 0,
    },
  });
  t.ok(report.disagreements > 0, `lying responses are counted (${report.disagreements})`);
  t.equal(report.disagreements, report.outcomes.lie?.['500'], 'exactly the lying ones');
});
