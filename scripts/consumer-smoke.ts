// `pnpm test:consumer`: the packages as a user gets them. Packs every package, installs the
// tarballs with npm into a fresh ESM app and a fresh CommonJS app in a temporary folder (neither
// lists @types/pg: it must come with @context-db/core), type-checks test/consumer/src there under
// each module resolution a user may have (ESM: nodenext and bundler; CJS: nodenext and node10),
// whose @ts-expect-error probes fail if `request.db`, `req.db`, `ctx.db` or query rows lose their
// types, then runs the nodenext build: one committing and one rolled-back request per framework
// against DATABASE_URL. The ESM app uses Express 5 and Koa 3, the CJS app Express 4 and Koa 2.
// The ESM app also installs @context-db/kysely and @context-db/drizzle with their peers (kysely,
// drizzle-orm) and type-checks and runs test/consumer/query-builders: typed rows, a wrong column
// refused, one insert and one select through each on a context session.
//
//   tsx scripts/with-db.ts tsx scripts/consumer-smoke.ts      (after pnpm build)
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pack, publishablePackages, root, run } from './packages.js';

/** The packages both apps use. */
const adapters = ['@context-db/core', '@context-db/express', '@context-db/fastify', '@context-db/koa'];
const queryBuilders = ['@context-db/kysely', '@context-db/drizzle'];

interface App {
  readonly name: 'esm' | 'cjs';
  readonly type: 'module' | 'commonjs';
  readonly tsconfigs: readonly string[];
  /**
   * The ESM app checks with skipLibCheck (tsc --init's default), where a type lost to a missing
   * @types package silently becomes `any` and only the probes see it; @types/koa 3 also refers to
   * an `Options` that content-disposition 1.x no longer exports. The CJS app checks every
   * declaration file, ours included.
   */
  readonly skipLibCheck: boolean;
  readonly dependencies: Readonly<Record<string, string>>;
  /** The @context-db packages installed from their tarballs, core first. */
  readonly packages: readonly string[];
  /** Whether test/consumer/query-builders is checked and run too. */
  readonly queryBuilders: boolean;
}

const common = { pg: '^8.16.0', fastify: '^5.6.0', typescript: '~5.9.3', '@types/node': '^22.0.0' };
const apps: readonly App[] = [
  {
    name: 'esm',
    type: 'module',
    tsconfigs: ['tsconfig.nodenext.json', 'tsconfig.bundler.json'],
    skipLibCheck: true,
    dependencies: {
      ...common,
      express: '^5.1.0',
      '@types/express': '^5.0.3',
      koa: '^3.0.0',
      '@types/koa': '^3.0.0',
      kysely: '^0.29.9',
      'drizzle-orm': '^0.45.4',
    },
    packages: [...adapters, ...queryBuilders],
    queryBuilders: true,
  },
  {
    name: 'cjs',
    type: 'commonjs',
    tsconfigs: ['tsconfig.nodenext.json', 'tsconfig.node10.json'],
    skipLibCheck: false,
    dependencies: {
      ...common,
      express: '^4.21.2',
      '@types/express': '^4.17.21',
      koa: '^2.16.0',
      '@types/koa': '^2.15.0',
    },
    packages: adapters,
    queryBuilders: false,
  },
];

const databaseUrl = process.env.DATABASE_URL;
if (databaseUrl === undefined) {
  console.error('DATABASE_URL is not set: run it as tsx scripts/with-db.ts tsx scripts/consumer-smoke.ts');
  process.exit(2);
}

/** Runs a step, printing `ok`/`not ok`; its stdout, or on failure an error with all it printed. */
async function step(app: App, what: string, command: string, args: string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await run(command, args, {
      cwd,
      env: { ...process.env, DATABASE_URL: databaseUrl, NO_COLOR: '1' },
      maxBuffer: 16 * 1024 * 1024,
    });
    console.log(`ok ${app.name}: ${what}`);
    return stdout;
  } catch (err) {
    const { stdout = '', stderr = '' } = err as { stdout?: string; stderr?: string };
    throw new Error(`not ok ${app.name}: ${what}\n${stdout}${stderr}`);
  }
}

async function checkApp(app: App, dir: string, tarballs: Readonly<Record<string, string>>): Promise<void> {
  await mkdir(dir);
  await cp(join(root, 'test/consumer/src'), join(dir, 'src'), { recursive: true });
  if (app.queryBuilders) {
    await cp(join(root, 'test/consumer/query-builders'), join(dir, 'src/query-builders'), { recursive: true });
  }
  for (const tsconfig of app.tsconfigs) await cp(join(root, 'test/consumer', tsconfig), join(dir, tsconfig));
  const dependencies = {
    ...app.dependencies,
    ...Object.fromEntries(app.packages.map((name) => [name, `file:${tarballs[name]}`])),
  };
  const manifest = { name: `context-db-consumer-${app.name}`, private: true, type: app.type, dependencies };
  await writeFile(join(dir, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  await step(
    app,
    'npm install of the tarballs',
    'npm',
    ['install', '--no-audit', '--no-fund', '--loglevel=error'],
    dir,
  );

  // @types/pg came with core (the app does not list it), and there is one copy of core, at the
  // top: the adapters take it as a peer instead of nesting their own.
  const ls = JSON.parse(await step(app, 'npm ls @types/pg', 'npm', ['ls', '--json', '--all', '@types/pg'], dir)) as {
    dependencies?: Record<string, { dependencies?: Record<string, unknown> }>;
  };
  if (ls.dependencies?.['@context-db/core']?.dependencies?.['@types/pg'] === undefined) {
    throw new Error(`not ok ${app.name}: @types/pg did not come with @context-db/core`);
  }
  for (const adapter of app.packages.slice(1)) {
    if (existsSync(join(dir, 'node_modules', adapter, 'node_modules/@context-db/core'))) {
      throw new Error(`not ok ${app.name}: ${adapter} has a nested copy of @context-db/core`);
    }
  }
  console.log(`ok ${app.name}: @types/pg came with @context-db/core; one copy of core`);

  const tsc = join(dir, 'node_modules/typescript/bin/tsc');
  for (const tsconfig of app.tsconfigs) {
    await step(
      app,
      `tsc -p ${tsconfig} (strict, skipLibCheck ${app.skipLibCheck}, type probes)`,
      process.execPath,
      [tsc, '-p', tsconfig, '--skipLibCheck', String(app.skipLibCheck)],
      dir,
    );
  }
  const output = await step(
    app,
    'serves a committing and a rolled-back request per framework',
    process.execPath,
    ['dist/server.js'],
    dir,
  );
  process.stdout.write(`   ${output.trim()}\n`);
  if (app.queryBuilders) {
    const probe = await step(
      app,
      'Kysely and Drizzle run a query each on the context session',
      process.execPath,
      ['dist/query-builders/query-builders.js'],
      dir,
    );
    process.stdout.write(`   ${probe.trim()}\n`);
  }
}

const work = await mkdtemp(join(tmpdir(), 'context-db-consumer-'));
let failed = false;
try {
  const tarballDir = join(work, 'tarballs');
  await mkdir(tarballDir);
  const tarballs: Record<string, string> = {};
  const used = new Set(apps.flatMap((app) => app.packages));
  for (const pkg of publishablePackages().filter((p) => used.has(p.json.name))) {
    tarballs[pkg.json.name] = await pack(pkg, tarballDir);
  }
  // Both apps at once: most of the time is npm's network and tsc, on different cores.
  const results = await Promise.allSettled(apps.map((app) => checkApp(app, join(work, app.name), tarballs)));
  for (const result of results) {
    if (result.status === 'rejected') {
      failed = true;
      console.log(result.reason instanceof Error ? result.reason.message : String(result.reason));
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
if (failed) process.exit(1);
console.log(
  'consumer smoke test: the ESM and the CJS app type-check and serve from the tarballs; Kysely and Drizzle type-check and query',
);
