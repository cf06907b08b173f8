// Isolation under load: 2000 requests at once per framework on a pool of 10. Each request checks
// that its session's backend pid and transaction id stay its own from its first to its last query,
// and that no two requests in flight share a pid or a transaction id.
import t from 'tap';
import { formatReport, frameworks, IsolationTracker, startMix } from '../fixtures/chaos.js';
import { admin, createDeferredTable, testDb } from '../fixtures/db.js';

const CONCURRENT = 2000;

for (const framework of frameworks) {
  t.test(`${framework}: ${CONCURRENT} concurrent requests never see another request's session`, async (t) => {
    const { db, appName } = testDb(t, { max: 10, connectionTimeoutMillis: 30_000 });
    const table = await createDeferredTable(t);
    const mix = await startMix(framework, { db, appName, table, admin });
    t.teardown(() => mix.server.close());
    const report = await mix.run({
      requests: CONCURRENT,
      concurrency: CONCURRENT,
      seed: 11,
      weights: { abort: 0, kill: 0, killSwallowed: 0, deferred: 1, ok: 4, fanout: 1 },
      // Requests may wait up to the pool's connectionTimeoutMillis: only past that is one a hang.
      timeoutMs: 45_000,
    });
    t.comment(formatReport(report));
    t.ok((report.outcomes.ok?.['200'] ?? 0) > CONCURRENT / 4, 'most requests were served');
    t.equal(report.leaks, 0, 'no cross-request leak');
    t.equal(report.disagreements, 0, 'no status/database disagreement');
    t.equal(report.halfWritten, 0);
    t.equal(report.unexpectedStatus, 0);
    t.equal(report.hangs, 0);
    t.equal(report.checkedOut, 0);
    t.equal(report.idleInTransaction, 0);
  });
}

t.test('the tracker reports two requests on one session', async (t) => {
  const { db } = testDb(t, { max: 1 });
  const tracker = new IsolationTracker();
  const session = await db.createSession();
  t.teardown(() => session.close());
  const a = await tracker.enter('a', session);
  const b = await tracker.enter('b', session);
  await session.commit();
  await a.leave();
  await b.leave();
  t.ok(
    tracker.leaks.some((leak) => leak.id === 'pid' && leak.other === 'a'),
    'shared pid reported',
  );
  t.ok(
    tracker.leaks.some((leak) => leak.id === 'txid' && leak.other === 'a'),
    'shared txid reported',
  );
  t.ok(
    tracker.leaks.some((leak) => leak.what.startsWith('txid changed')),
    'txid change reported',
  );
});
