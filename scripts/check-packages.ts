// `pnpm check:packages`: packs every publishable package as `pnpm publish` would and checks the
// tarball: publint --strict, arethetypeswrong (node10, node16 from CJS and ESM, bundler), and
// what a user and the registry page need (LICENSE, README with absolute links, metadata, peers).
// Needs `pnpm build` first. Exits non-zero on any problem.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type PackageJson, pack, publishablePackages, root, run, type WorkspacePackage } from './packages.js';

const rootJson = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as PackageJson;
/** Where the packages will be published from; every package's URLs point into it. */
const repoUrl = 'https://github.com/context-db/context-db';
const license = await readFile(join(root, 'LICENSE'), 'utf8');

/** A README's "Node.js N or later" that is not what `engines.node` (`>=N`) allows. */
function nodeStatementProblems(readme: string, engines: string | undefined): string[] {
  const minimum = /^>=(\d+(?:\.\d+)*)$/.exec(engines ?? '')?.[1];
  return [...readme.replace(/\s+/g, ' ').matchAll(/Node\.js (\d+(?:\.\d+)*) or later/g)]
    .filter(([, stated]) => stated !== minimum)
    .map(([, stated]) => `README says Node.js ${stated} or later, engines.node is ${engines}`);
}

/** The problems of one packed package, apart from publint's and attw's. */
async function metadataProblems(pkg: WorkspacePackage, tarball: string): Promise<string[]> {
  const problems: string[] = [];
  const files = (await run('tar', ['tzf', tarball])).stdout.split('\n');
  const read = async (file: string) => (await run('tar', ['xzf', tarball, '-O', `package/${file}`])).stdout;
  for (const file of ['LICENSE', 'README.md', 'package.json']) {
    if (!files.includes(`package/${file}`)) problems.push(`${file} is not in the tarball`);
  }
  if (files.some((file) => file.startsWith('package/src/'))) problems.push('the tarball ships src/');
  const text = await read('package.json');
  if (text.includes('workspace:')) problems.push('a workspace: range is left in the packed package.json');
  const json = JSON.parse(text) as PackageJson;
  if (json.publishConfig?.access !== 'public') problems.push('publishConfig.access is not "public"');
  if (json.license !== 'MIT') problems.push('license is not MIT');
  if (files.includes('package/LICENSE') && (await read('LICENSE')) !== license)
    problems.push('LICENSE differs from the root one');
  if (!json.keywords?.length) problems.push('no keywords');
  // One repository for all: the README's folder (check-snippets.ts checks that links into it exist).
  const homepage = `${repoUrl}/tree/main/packages/${pkg.dir}#readme`;
  if (json.homepage !== homepage) problems.push(`homepage is not ${homepage}`);
  if (json.bugs?.url !== `${repoUrl}/issues`) problems.push(`bugs.url is not ${repoUrl}/issues`);
  if (json.repository?.url !== `git+${repoUrl}.git` || json.repository.directory !== `packages/${pkg.dir}`) {
    problems.push(`repository needs url git+${repoUrl}.git and directory "packages/${pkg.dir}"`);
  }
  if (json.engines?.node !== rootJson.engines?.node) {
    problems.push(`engines.node ${json.engines?.node} is not the root's ${rootJson.engines?.node}`);
  }
  if (json.name === '@context-db/core') {
    // Its public types import pg's: without @types/pg, an app gets TS7016 or untyped rows.
    if (!json.dependencies?.['@types/pg']) problems.push('@types/pg is not a dependency');
  } else {
    // A normal dependency lets npm nest a second core, whose classes the app's copy rejects.
    if (!json.peerDependencies?.['@context-db/core']) problems.push('@context-db/core is not a peer dependency');
    if (json.dependencies?.['@context-db/core']) problems.push('@context-db/core is a normal dependency');
  }
  const readme = files.includes('package/README.md') ? await read('README.md') : '';
  problems.push(...nodeStatementProblems(readme, json.engines?.node));
  // Relative links break on the registry's page, which shows the README outside the repository.
  const relative = readme.match(/\]\((?!https?:\/\/|#|mailto:)[^)]*\)/g) ?? [];
  for (const link of relative) problems.push(`README link is relative: ${link}`);
  return problems;
}

/** A command's output, and whether it exited 0. */
async function tool(command: string, args: string[]): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout, stderr } = await run(command, args, { cwd: root, env: { ...process.env, NO_COLOR: '1' } });
    return { ok: true, output: stdout + stderr };
  } catch (err) {
    const { stdout = '', stderr = '' } = err as { stdout?: string; stderr?: string };
    return { ok: false, output: stdout + stderr };
  }
}

const rootProblems = nodeStatementProblems(await readFile(join(root, 'README.md'), 'utf8'), rootJson.engines?.node);
if (rootProblems.length === 0) {
  console.log('ok README.md: the Node versions it states are the root engines.node');
} else {
  console.log(`not ok README.md\n${rootProblems.map((p) => `  - ${p}`).join('\n')}`);
}

const destination = await mkdtemp(join(tmpdir(), 'context-db-pack-'));
let failed = rootProblems.length > 0 ? 1 : 0;
try {
  for (const pkg of publishablePackages()) {
    const tarball = await pack(pkg, destination);
    const problems = await metadataProblems(pkg, tarball);
    const publint = await tool('publint', ['run', '--strict', tarball]);
    if (!publint.ok || !publint.output.includes('All good!')) problems.push(`publint --strict:\n${publint.output}`);
    const attw = await tool('attw', ['--no-definitely-typed', '--format', 'ascii', '--no-emoji', tarball]);
    if (!attw.ok) problems.push(`arethetypeswrong:\n${attw.output}`);
    if (problems.length === 0) {
      console.log(`ok ${pkg.json.name}: publint --strict, arethetypeswrong, metadata, LICENSE, README links`);
    } else {
      failed++;
      console.log(`not ok ${pkg.json.name}\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    }
  }
} finally {
  await rm(destination, { recursive: true, force: true });
}
if (failed > 0) {
  console.error(`${failed} package(s) (or the root README) not ready to publish`);
  process.exit(1);
}
