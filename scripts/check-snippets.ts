// `pnpm check:snippets`: what a reader copies from the READMEs works. Every ```ts block of
// README.md, packages/*/README.md and examples/*/README.md is type-checked as an ES module under
// `strict`, with the workspace packages resolved as an app gets them (their built `dist` types,
// so run `pnpm build` first), and every link to a path of this repository (relative, or
// absolute to its GitHub URL) must point at a file or folder in the tree, and at a heading there
// when it has a `#fragment`. Prints `ok`/`not ok` per README, each failure as README:line.
//
// A block is checked as written, with its own imports. Two comments right before a block change
// that, for blocks that continue an example or only show an option:
//   <!-- snippet-setup
//   import Fastify from 'fastify';
//   const app = Fastify();
//   -->                                   the hidden lines are put before the block, which must
//                                         then compile (keep them to what the prose has shown)
//   <!-- snippet: fragment -->            not checked at all (a line that is not code on its own)
// A block whose first line is a file-name comment (`// db.ts: …`) is also that file for the
// other blocks of the same README: they may `import { … } from './db.js'`.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { publishablePackages, root } from './packages.js';

/** The GitHub URL the packages publish under (package.json `repository`); links to it are checked against this tree. */
const repoUrl = 'https://github.com/context-db/context-db';

interface Snippet {
  readonly readme: string;
  /** The README line of the block's first code line (1-based). */
  readonly line: number;
  readonly code: string;
  readonly setup: string;
  /** Set by a `// name.ts` first line: other blocks of the README import it as `./name.js`. */
  readonly fileName: string | undefined;
}

interface ReadmeReport {
  readonly problems: string[];
  checked: number;
  fragments: number;
}

function readmes(): string[] {
  const found = ['README.md'];
  for (const parent of ['packages', 'examples']) {
    const dir = join(root, parent);
    if (!existsSync(dir)) continue;
    for (const name of readdirSync(dir).sort()) {
      if (existsSync(join(dir, name, 'README.md'))) found.push(`${parent}/${name}/README.md`);
    }
  }
  return found;
}

/** The ```ts blocks of one README, with the marker comment before each, if any. */
function snippetsOf(readme: string, report: ReadmeReport): Snippet[] {
  const lines = readFileSync(join(root, readme), 'utf8').split('\n');
  const snippets: Snippet[] = [];
  for (let i = 0; i < lines.length; i++) {
    const fence = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)(.*)$/.exec(lines[i] ?? '');
    if (!fence) continue;
    const [, indent = '', marks = '', lang = ''] = fence;
    let end = i + 1;
    while (end < lines.length && !(lines[end] ?? '').trimStart().startsWith(marks)) end++;
    const body = lines.slice(i + 1, end).map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l));
    if (lang === 'ts' || lang === 'typescript') {
      const marker = markerBefore(lines, i);
      if (marker?.kind === 'fragment') {
        report.fragments++;
      } else {
        const fileName = /^\/\/\s*([\w.-]+\.ts)\b/.exec(body[0] ?? '')?.[1];
        snippets.push({ readme, line: i + 2, code: body.join('\n'), setup: marker?.setup ?? '', fileName });
      }
    }
    i = end;
  }
  return snippets;
}

/** The `<!-- snippet… -->` comment that ends on the last non-blank line before line `fence`. */
function markerBefore(lines: readonly string[], fence: number): { kind: 'fragment' | 'setup'; setup: string } | null {
  let last = fence - 1;
  while (last >= 0 && (lines[last] ?? '').trim() === '') last--;
  if (!(lines[last] ?? '').trimEnd().endsWith('-->')) return null;
  let first = last;
  while (first >= 0 && !(lines[first] ?? '').includes('<!--')) first--;
  const comment = lines
    .slice(first, last + 1)
    .join('\n')
    .replace(/^[\s\S]*?<!--/, '')
    .replace(/-->\s*$/, '');
  if (/^\s*snippet:\s*fragment\s*$/.test(comment)) return { kind: 'fragment', setup: '' };
  const setup = /^\s*snippet-setup\s*\n([\s\S]*)$/.exec(comment);
  return setup ? { kind: 'setup', setup: `${(setup[1] ?? '').trimEnd()}\n` } : null;
}

const compilerOptions: ts.CompilerOptions = {
  target: ts.ScriptTarget.ES2022,
  lib: ['lib.es2023.d.ts'],
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  moduleDetection: ts.ModuleDetectionKind.Force,
  strict: true,
  esModuleInterop: true,
  skipLibCheck: true,
  types: ['node'],
  noEmit: true,
};

/** Type-checks every snippet in one program; the problems as `README:line:col message`. */
function typeCheck(snippets: readonly Snippet[], reports: Map<string, ReadmeReport>): void {
  // Inside the repository, so that `@context-db/*`, fastify, express, koa… resolve from its node_modules.
  mkdirSync(join(root, '.tmp'), { recursive: true });
  const work = mkdtempSync(join(root, '.tmp/snippets-'));
  try {
    writeFileSync(join(work, 'package.json'), '{ "type": "module" }\n');
    const byFile = new Map<string, Snippet>();
    for (const snippet of snippets) {
      const dir = join(work, snippet.readme.replaceAll('/', '__').replace(/\.md$/, ''));
      mkdirSync(dir, { recursive: true });
      const file = join(dir, snippet.fileName ?? `line-${snippet.line}.ts`);
      if (byFile.has(file)) {
        reports
          .get(snippet.readme)
          ?.problems.push(`${snippet.readme}:${snippet.line}: a second block named ${snippet.fileName}`);
        continue;
      }
      byFile.set(file, snippet);
      writeFileSync(file, snippet.setup + snippet.code);
    }
    // @koa/router 14, the workspace's, ships no types (15 does): the examples' declaration of it.
    const ambient = [join(root, 'examples/koa/src/koa-router.d.ts')];
    const program = ts.createProgram([...byFile.keys(), ...ambient], compilerOptions);
    for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
      const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n    ');
      const snippet = diagnostic.file ? byFile.get(resolve(diagnostic.file.fileName)) : undefined;
      if (!snippet || !diagnostic.file || diagnostic.start === undefined) {
        // Outside the snippets (a missing build, a broken package): every README is suspect.
        for (const report of reports.values()) report.problems.push(`TS${diagnostic.code} ${message}`);
        continue;
      }
      const pos = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
      const setupLines = snippet.setup.split('\n').length - 1;
      const where =
        pos.line < setupLines
          ? `${snippet.readme}:${snippet.line - 1} (snippet-setup line ${pos.line + 1})`
          : `${snippet.readme}:${snippet.line + pos.line - setupLines}:${pos.character + 1}`;
      reports.get(snippet.readme)?.problems.push(`${where} TS${diagnostic.code} ${message}`);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const counts = new Map<string, number>();
  let inFence = false;
  for (const line of markdown.split('\n')) {
    if (/^\s*(`{3,}|~{3,})/.test(line)) inFence = !inFence;
    const heading = inFence ? null : /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!heading) continue;
    const base = (heading[1] ?? '')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/ /g, '-');
    const n = counts.get(base) ?? 0;
    counts.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** Files in the tree (tracked, or new and not ignored), and the folders that hold them. */
function treePaths(): Set<string> {
  const files = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard'], {
    cwd: root,
    encoding: 'utf8',
  })
    .split('\n')
    .filter((f) => f !== '' && existsSync(join(root, f)));
  const paths = new Set<string>(['']);
  for (const file of files) {
    for (let p = file; p !== '.' && p !== ''; p = dirname(p)) paths.add(p);
  }
  return paths;
}

/** Links to this repository that point at no path in the tree, or at no heading of the file. */
function linkProblems(readme: string, tree: Set<string>): string[] {
  const problems: string[] = [];
  const lines = readFileSync(join(root, readme), 'utf8').split('\n');
  let inFence = false;
  lines.forEach((line, index) => {
    if (/^\s*(`{3,}|~{3,})/.test(line)) inFence = !inFence;
    if (inFence) return;
    for (const match of line.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)|<(https?:\/\/[^>]+)>/g)) {
      const target = match[1] ?? match[2] ?? '';
      let path: string;
      let fragment: string | undefined;
      if (target.startsWith(`${repoUrl}/`) || target === repoUrl) {
        const rest = target.slice(repoUrl.length).replace(/^\//, '');
        const [before, hash] = rest.split('#', 2) as [string, string | undefined];
        fragment = hash;
        if (before === '' || before === 'issues' || before.startsWith('issues/') || before.startsWith('pulls')) {
          path = '';
        } else {
          const tree = /^(?:tree|blob)\/main(?:\/(.*))?$/.exec(before);
          if (!tree) {
            problems.push(`${readme}:${index + 1}: ${target}: not a tree/main or blob/main URL`);
            continue;
          }
          path = (tree[1] ?? '').replace(/\/$/, '');
        }
      } else if (/^[a-z][a-z0-9+.-]*:/i.test(target)) {
        continue; // another site
      } else {
        const [before, hash] = target.split('#', 2) as [string, string | undefined];
        fragment = hash;
        path = before === '' ? readme : relative(root, resolve(root, dirname(readme), before));
      }
      if (!tree.has(path)) {
        problems.push(`${readme}:${index + 1}: ${target}: no ${path} in the repository`);
        continue;
      }
      if (fragment === undefined || fragment === 'readme') continue;
      const file = tree.has(join(path, 'README.md')) ? join(path, 'README.md') : path;
      if (file.endsWith('.md') && !anchorsOf(readFileSync(join(root, file), 'utf8')).has(fragment)) {
        problems.push(`${readme}:${index + 1}: ${target}: no heading #${fragment} in ${file}`);
      }
    }
  });
  return problems;
}

const started = Date.now();
const reports = new Map<string, ReadmeReport>();
const snippets: Snippet[] = [];
for (const readme of readmes()) {
  const report: ReadmeReport = { problems: [], checked: 0, fragments: 0 };
  reports.set(readme, report);
  const found = snippetsOf(readme, report);
  report.checked = found.length;
  snippets.push(...found);
}
for (const pkg of publishablePackages()) {
  if (!existsSync(join(pkg.path, 'dist'))) {
    console.error(`${pkg.json.name} is not built: run pnpm build first`);
    process.exit(2);
  }
}
typeCheck(snippets, reports);
const tree = treePaths();
let failed = 0;
for (const [readme, report] of reports) {
  report.problems.push(...linkProblems(readme, tree));
  const what = `${report.checked} ts snippets type-check${report.fragments ? ` (${report.fragments} fragments skipped)` : ''}, links resolve`;
  if (report.problems.length === 0) {
    console.log(`ok ${readme}: ${what}`);
  } else {
    failed++;
    console.log(`not ok ${readme}\n${report.problems.map((p) => `  ${p}`).join('\n')}`);
  }
}
console.log(`# ${snippets.length} snippets in ${reports.size} READMEs, ${Date.now() - started} ms`);
if (failed > 0) process.exit(1);
