// Every package loads from its built dist/ as users install it, in both module systems: a
// syntax that one format cannot take (`import.meta` in CommonJS) must fail here, not in a user's app.
import { createRequire } from 'node:module';
import t from 'tap';

const require = createRequire(import.meta.url);
const packages = {
  '@context-db/core': 'DbConnect',
  '@context-db/core/testing': 'setTestContext',
  '@context-db/fastify': 'contextDbPlugin',
  '@context-db/express': 'contextDb',
  '@context-db/koa': 'contextDb',
  '@context-db/kysely': 'ContextDbDialect',
  '@context-db/drizzle': 'contextDrizzle',
} as const;

for (const [name, entry] of Object.entries(packages)) {
  t.test(`${name} loads from its CommonJS and ESM builds`, async (t) => {
    const dist = name.replace('@context-db/', '../../packages/').replace('/testing', '/dist/testing');
    const base = dist.endsWith('testing') ? dist : `${dist}/dist/index`;
    const cjs = require(`${base}.cjs`) as Record<string, unknown>;
    t.type(cjs[entry], 'function', `require() gives ${entry}`);
    const esm = (await import(`${base}.js`)) as Record<string, unknown>;
    t.type(esm[entry], 'function', `import() gives ${entry}`);
  });
}
