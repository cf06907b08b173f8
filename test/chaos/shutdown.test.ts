// A graceful shutdown in the middle of the chaos mix, per framework: the server stops accepting
// and drains what is in flight (clients leaving, deadlines passing, gated requests included), then
// db.close(). Every answered request agrees with the database, a refused one wrote nothing,
// nothing hangs and no connection is left on the server.
import t from 'tap';
import { formatReport, frameworks, startMix } from '../fixtures/chaos.js';
import { admin, createDeferredTable, testDb } from '../fixtures/db.js';

const REQUESTS = 300;

for (const framework of frameworks) {
  t.test(`${framework}: a shutdown half-way through ${REQUESTS} mixed requests`, async (t) => {
    const { db, appName } = testDb(t, { max: 8 });
    const table = await createDeferredTable(t);
    const mix = await startMix(framework, { db, appName, table, admin }, { graceful: true });
    t.teardown(() => mix.server.close());
    const report = await mix.run({ requests: REQUESTS, concurrency: 24, seed: 13, shutdownAfter: REQUESTS / 2 });
    t.comment(formatReport(report));
    t.ok(report.shutdownMs !== undefined, 'the shutdown ran and the server closed');
    t.ok(report.refused > 0, 'requests sent after it were refused');
    t.ok(db.closed, 'then db.close()');
    t.equal(report.disagreements, 0, 'no status/database disagreement, and nothing written by a refused request');
    t.equal(report.halfWritten, 0);
    t.equal(report.unexpectedStatus, 0);
    t.equal(report.hangs, 0, 'no request hung');
    t.equal(report.leaks, 0);
    t.equal(report.checkedOut, 0, 'no connection left on the server');
    t.equal(report.idleInTransaction, 0);
    t.equal(report.uncancelled, 0);
  });
}
