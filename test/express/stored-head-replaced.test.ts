// A 204 or 304 head stored by res.writeHead() and replaced by the 500 of a failed COMMIT: Node's
// writeHead() also cleared _hasBody, so the 500 would promise a body (Content-Length: 21) that
// never came, and a keep-alive client would wait for it. The connection must stay usable.
import http from 'node:http';
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, admin, checkedOut, createDeferredTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, majors } from '../fixtures/express.js';

// Resolves with the head and the body, or with 'timeout' when the body never completes.
function get(url: string, agent: http.Agent): Promise<{ status: number; body: string; reused: boolean } | 'timeout'> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent }, (res) => {
      const chunks: Buffer[] = [];
      const timer = setTimeout(() => resolve('timeout'), 1500);
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), reused: req.reusedSocket });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

for (const { name, express } of majors) {
  for (const status of [204, 304]) {
    t.test(`${name}: writeHead(${status}) then a failed COMMIT: the client gets a complete 500`, async (t) => {
      const { db, appName } = testDb(t);
      const table = await createDeferredTable(t);
      await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'dup')`);
      const app = express();
      app.set('env', 'test');
      app.use(contextDb({ db }));
      app.post('/', (_req: Request, res: Response, next: NextFunction) => {
        dbSession(db)
          .then((s) => s.query(`INSERT INTO ${table} (text, key) VALUES ('req', 'dup')`))
          .then(() => {
            res.writeHead(status);
            res.end();
          })
          .catch(next);
      });
      const url = await listen(t, app);
      const agent = new http.Agent({ keepAlive: true });
      t.teardown(() => agent.destroy());
      const reply = await get(url, agent);
      t.not(reply, 'timeout', 'the response completes (no Content-Length promising a body that never comes)');
      if (reply !== 'timeout') {
        t.equal(reply.status, 500);
        t.equal(reply.body, 'Internal Server Error');
      }
      const again = await get(url, agent);
      t.not(again, 'timeout', 'the kept-alive connection serves the next request');
      if (again !== 'timeout') t.ok(again.reused, 'on the same socket');
      t.same(await texts(table), ['existing'], 'rolled back');
      t.ok(await eventually(() => checkedOut(db) === 0));
      t.equal((await activity(appName)).idleInTransaction, 0);
    });
  }
}
