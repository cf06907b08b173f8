// The publishable packages of the workspace and their tarballs, as `pnpm publish` would upload
// them (workspace: ranges replaced by real ones). Used by check-packages.ts and
// consumer-smoke.ts.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const root = fileURLToPath(new URL('..', import.meta.url));
export const run = promisify(execFile);

/** What check-packages.ts reads of a package.json. */
export interface PackageJson {
  readonly name: string;
  readonly version: string;
  readonly private?: boolean;
  readonly license?: string;
  readonly keywords?: readonly string[];
  readonly homepage?: string;
  readonly bugs?: { readonly url?: string };
  readonly repository?: { readonly type?: string; readonly url?: string; readonly directory?: string };
  readonly publishConfig?: { readonly access?: string };
  readonly engines?: { readonly node?: string };
  readonly dependencies?: Readonly<Record<string, string>>;
  readonly peerDependencies?: Readonly<Record<string, string>>;
}

export interface WorkspacePackage {
  /** The folder under packages/, e.g. `core`. */
  readonly dir: string;
  readonly path: string;
  readonly json: PackageJson;
}

/** Every packages/* folder whose package.json is not private, in name order. */
export function publishablePackages(): WorkspacePackage[] {
  return readdirSync(join(root, 'packages'))
    .filter((dir) => existsSync(join(root, 'packages', dir, 'package.json')))
    .map((dir) => {
      const path = join(root, 'packages', dir);
      return { dir, path, json: JSON.parse(readFileSync(join(path, 'package.json'), 'utf8')) as PackageJson };
    })
    .filter((pkg) => pkg.json.private !== true)
    .sort((a, b) => a.json.name.localeCompare(b.json.name));
}

/** `pnpm pack` of `pkg` into `destination`; the tarball's path. Needs the package built. */
export async function pack(pkg: WorkspacePackage, destination: string): Promise<string> {
  if (!existsSync(join(pkg.path, 'dist'))) throw new Error(`${pkg.json.name} is not built: run pnpm build first`);
  const { stdout } = await run('pnpm', ['pack', '--pack-destination', destination], { cwd: pkg.path });
  const tarball = stdout.trim().split('\n').at(-1);
  if (tarball === undefined || !tarball.endsWith('.tgz')) throw new Error(`pnpm pack printed no tarball:\n${stdout}`);
  return tarball;
}
