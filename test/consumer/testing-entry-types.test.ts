// `@context-db/core/testing` and the main entry must resolve to one declaration of DbConnect and
// DbSession under every module resolution: their `#private` makes two declarations two types, so
// an app's DbConnect would be refused by the testing helpers (TS2345). Under node10 (CommonJS),
// which ignores `exports`, the main entry's types come from `types` and the subpath's from the
// stub packages/core/testing/package.json; both must name the same declaration files (once the
// subpath named testing.d.cts through typesVersions while `types` named index.d.ts). Type-checked
// against packages/core as installed (the package.json a tarball carries); needs `pnpm build`
// first, as the other package tests do. The consumer smoke test checks the same from the tarballs.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';

const root = join(import.meta.dirname, '../..');
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');

const source = `import { DbConnect, dbSession } from '@context-db/core';
import { putSavepointSessionInCtx, rollbackSession } from '@context-db/core/testing';
const db = new DbConnect({ connectionString: 'postgres://x' });
export async function f(): Promise<void> {
  await rollbackSession(db, async (s) => {
    await putSavepointSessionInCtx(db, s, async () => (await dbSession(db)).query('select 1'));
  });
}
`;

async function check(moduleOptions: string[]): Promise<string> {
  // Inside the repository, so that '@context-db/core' resolves through its node_modules.
  await mkdir(join(root, '.tmp'), { recursive: true });
  const dir = await mkdtemp(join(root, '.tmp', 'review-node10-'));
  try {
    await writeFile(join(dir, 'app.ts'), source);
    const args = [tsc, '--noEmit', '--strict', '--target', 'es2022', ...moduleOptions, join(dir, 'app.ts')];
    return await promisify(execFile)(process.execPath, args).then(
      () => '',
      (err: { stdout?: string }) => err.stdout ?? String(err),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

t.test('the testing helpers take the main entry DbConnect under nodenext', async (t) => {
  t.equal(await check(['--module', 'nodenext', '--moduleResolution', 'nodenext']), '');
});

t.test('the testing helpers take the main entry DbConnect under node10 (CommonJS)', async (t) => {
  t.equal(await check(['--module', 'commonjs', '--moduleResolution', 'node10']), '');
});
