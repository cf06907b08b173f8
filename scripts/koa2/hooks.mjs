// Resolve hook for register.mjs: `koa` (and its subpaths) resolve to the `koa2` alias.
export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'koa' || specifier.startsWith('koa/')) {
    return nextResolve(`koa2${specifier.slice(3)}`, context);
  }
  return nextResolve(specifier, context);
}
