import type { Options } from 'tsup';

/** The build every package shares: ESM and CommonJS for Node 20, with declarations and maps. */
export function packageBuild(entry: string[]): Options {
  return {
    entry,
    format: ['esm', 'cjs'],
    dts: true,
    clean: true,
    target: 'node20',
    sourcemap: true,
    // Entry points share chunks (core's index and testing) in both formats, so classes exist once.
    splitting: true,
    // `import.meta.url` in the CommonJS build (Fastify's plugin resolves a file of Fastify's own
    // with createRequire): without the shim it stays ESM syntax and the .cjs file cannot load.
    shims: true,
  };
}
