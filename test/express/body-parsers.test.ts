// The context survives body parsers and callback-style middleware: with each parser placed
// before contextDb(), after it, or on the route, the POST handler still finds its session.
import { dbSession, isContextInitiated } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { Request, RequestHandler, Response } from 'express';
import multer from 'multer';
import t from 'tap';
import { createTable, testDb, texts } from '../fixtures/db.js';
import { listen, majors, request } from '../fixtures/express.js';

// A parser written the old way: next() is called from the request stream's 'end' event, which
// runs in the socket's async context, not the one the middleware was called in.
const streamParser: RequestHandler = (req, _res, next) => {
  let text = '';
  req.setEncoding('utf8');
  req.on('data', (chunk: string) => {
    text += chunk;
  });
  req.on('end', () => {
    req.body = { text };
    next();
  });
};

async function multipart(
  fields: Record<string, string>,
  file?: string,
): Promise<{ headers: Record<string, string>; body: Buffer }> {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  if (file !== undefined) form.append('file', new Blob([file]), 'upload.txt');
  const encoded = new globalThis.Request('http://localhost/', { method: 'POST', body: form });
  return {
    headers: { 'content-type': encoded.headers.get('content-type') ?? '' },
    body: Buffer.from(await encoded.arrayBuffer()),
  };
}

for (const { name, express } of majors) {
  t.test(
    `${name}: json, urlencoded, multipart and a stream-callback parser, before and after contextDb()`,
    async (t) => {
      const { db } = testDb(t);
      const table = await createTable(t);
      const upload = multer({ storage: multer.memoryStorage() });
      const parsers: Record<string, RequestHandler> = {
        json: express.json(),
        urlencoded: express.urlencoded({ extended: false }),
        multipart: upload.none(),
        file: upload.single('file'),
        stream: streamParser,
      };
      const handler = async (req: Request, res: Response) => {
        const file = (req as Request & { file?: Express.Multer.File }).file;
        const text = file ? file.buffer.toString() : String((req.body as { text?: unknown }).text);
        if (!isContextInitiated()) throw new Error('the handler lost its context');
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
        res.json({ text });
      };
      const route = (fn: typeof handler) => (req: Request, res: Response, next: (err: unknown) => void) =>
        void fn(req, res).catch(next);

      // Before contextDb(): a sub-app whose parsers run first.
      const before = express();
      before.set('env', 'test');
      for (const [kind, parser] of Object.entries(parsers)) before.post(`/${kind}`, parser);
      before.use(contextDb({ db }));
      before.post('/:kind', route(handler));
      // After contextDb(), globally by path and on the route itself.
      const after = express();
      after.set('env', 'test');
      after.use(contextDb({ db }));
      for (const [kind, parser] of Object.entries(parsers)) after.use(`/global/${kind}`, parser);
      after.post('/global/:kind', route(handler));
      for (const [kind, parser] of Object.entries(parsers)) after.post(`/route/${kind}`, parser, route(handler));
      const urls = { before: await listen(t, before), global: `${await listen(t, after)}/global`, route: '' };
      urls.route = urls.global.replace(/global$/, 'route');

      const expected: string[] = [];
      for (const [position, base] of Object.entries(urls)) {
        const bodies = {
          json: { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: `json-${position}` }) },
          urlencoded: {
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            body: `text=urlencoded-${position}`,
          },
          multipart: await multipart({ text: `multipart-${position}` }),
          file: await multipart({ other: 'field' }, `file-${position}`),
          stream: { headers: { 'content-type': 'text/plain' }, body: `stream-${position}` },
        };
        for (const [kind, { headers, body }] of Object.entries(bodies)) {
          const reply = await request(`${base}/${kind}`, { headers, body });
          t.equal(reply.status, 200, `${kind} ${position}: the handler found its session`);
          expected.push(`${kind}-${position}`);
        }
      }
      t.same((await texts(table)).sort(), expected.sort(), 'every request committed its row');
    },
  );
}
