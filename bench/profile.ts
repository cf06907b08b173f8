// Summarise a V8 CPU profile written by `pnpm bench --profile` (node --cpu-prof on a server
// child): self time grouped by where the code lives, then the costliest functions.
//
//   npx tsx bench/profile.ts bench/results/profiles/fastify-context-db [--top 25]
//
// Given a directory, it reads the largest profile in it: the server's main thread (tsx's loader
// thread writes a small one too). With the number of requests the server answered (--requests,
// or bench/results/latest.json's requestsServed for a directory named after the server), it
// also prints the CPU time per request.
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}
interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
}
interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

const AREAS: readonly (readonly [string, RegExp])[] = [
  ['context-db core', /packages\/core\//],
  ['context-db adapter', /packages\/(fastify|express|koa)\//],
  ['pg', /node_modules\/(\.pnpm\/[^/]+\/node_modules\/)?(pg|pg-pool|pg-protocol|pg-types|pg-connection-string)\//],
  ['@fastify/postgres', /@fastify\/postgres\//],
  [
    'fastify',
    /node_modules\/(\.pnpm\/[^/]+\/node_modules\/)?(fastify|@fastify|find-my-way|light-my-request|avvio|fast-json-stringify|secure-json-parse)/,
  ],
  [
    'express',
    /node_modules\/(\.pnpm\/[^/]+\/node_modules\/)?(express|router|body-parser|raw-body|finalhandler|send|qs|type-is|content-type)\//,
  ],
  ['koa', /node_modules\/(\.pnpm\/[^/]+\/node_modules\/)?(koa|@koa|koa-compose|co-body|delegates|cookies)\//],
  ['bench app', /\/bench\//],
  ['node: async_hooks / AsyncLocalStorage', /node:async_hooks|internal\/async_hooks|async_local_storage/],
  ['node: http / net / streams', /node:(_http|http|net|stream|internal\/(streams|http|net|stream_base))/],
  ['node: other', /^node:/],
  ['other node_modules', /node_modules/],
];

function area(frame: CallFrame): string {
  if (frame.url === '') return frame.functionName.startsWith('(') ? frame.functionName : '(native / builtins)';
  for (const [name, pattern] of AREAS) if (pattern.test(frame.url)) return name;
  return 'other';
}

function shortUrl(url: string): string {
  return url.replace(/^file:\/\/\/work\/main\//, '').replace(/node_modules\/\.pnpm\/[^/]+\/node_modules\//, '');
}

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { top: { type: 'string', default: '25' }, requests: { type: 'string' } },
});
const [given] = positionals;
if (given === undefined) {
  console.error('usage: npx tsx bench/profile.ts <file.cpuprofile | profile directory> [--top N]');
  process.exit(2);
}

async function largestProfile(dir: string): Promise<string> {
  const files = (await readdir(dir)).filter((name) => name.endsWith('.cpuprofile')).map((name) => join(dir, name));
  const sizes = await Promise.all(files.map(async (file) => ({ file, size: (await stat(file)).size })));
  const largest = sizes.sort((a, b) => b.size - a.size)[0];
  if (largest === undefined) throw new Error(`no .cpuprofile in ${dir}`);
  return largest.file;
}

const isDirectory = (await stat(given)).isDirectory();
const file = isDirectory ? await largestProfile(given) : given;

async function requestsServed(dir: string): Promise<number | undefined> {
  if (values.requests !== undefined) return Number(values.requests);
  if (!isDirectory) return undefined;
  const latest = join(dirname(fileURLToPath(import.meta.url)), 'results', 'latest.json');
  try {
    const { requestsServed } = JSON.parse(await readFile(latest, 'utf8')) as {
      requestsServed?: Record<string, number>;
    };
    return requestsServed?.[basename(dir)];
  } catch {
    return undefined;
  }
}
const requests = await requestsServed(given);
const profile = JSON.parse(await readFile(file, 'utf8')) as CpuProfile;
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const selfByArea = new Map<string, number>();
const selfByFunction = new Map<string, number>();
let total = 0;
profile.samples.forEach((id, i) => {
  const node = byId.get(id);
  const delta = profile.timeDeltas[i] ?? 0;
  if (node === undefined) return;
  const frame = node.callFrame;
  const where = area(frame);
  if (where === '(idle)') return;
  total += delta;
  selfByArea.set(where, (selfByArea.get(where) ?? 0) + delta);
  const name = `${frame.functionName || '(anonymous)'} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
  selfByFunction.set(name, (selfByFunction.get(name) ?? 0) + delta);
});

const pct = (us: number): string =>
  `${((100 * us) / total).toFixed(1).padStart(5)} %${requests ? `  ${(us / requests).toFixed(2).padStart(6)} µs/req` : ''}`;
const sorted = (map: Map<string, number>) => [...map.entries()].sort((a, b) => b[1] - a[1]);
const perRequest = requests ? `, ${requests} requests: ${(total / requests).toFixed(1)} µs of CPU per request` : '';
console.log(`${file}: ${(total / 1e6).toFixed(2)} s busy (idle excluded)${perRequest}\n\nself time by area`);
for (const [name, us] of sorted(selfByArea)) console.log(`  ${pct(us)}  ${name}`);
console.log(`\ntop ${values.top} functions by self time`);
for (const [name, us] of sorted(selfByFunction).slice(0, Number(values.top))) console.log(`  ${pct(us)}  ${name}`);
