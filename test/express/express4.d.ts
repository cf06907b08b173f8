// `express4` is the npm alias of Express 4 in the root devDependencies; it ships no types. The
// middleware signature the tests use is the same in both majors, so Express 5's types serve.
declare module 'express4' {
  import express from 'express';
  export default express;
}
