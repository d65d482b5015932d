// Bundles the restore path (what a process started by cpr-exec loads before the guest runs again)
// into one CommonJS file, dist/cpr/restore.cjs. Each choice was measured as whole-process CPU
// time against an empty CommonJS script (README, "Making it faster"):
// - CommonJS, not ES modules: Node 20's ES module loader costs ~6-9 ms at start-up;
// - one file: one module to resolve and parse instead of ~20;
// - msgpackr's pure-JS decoder bundled in: `require('msgpackr/unpack')` loads all of msgpackr
//   and its native string extractor (~18 ms); the encoder is needed only before the next update.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const unpackOnly = fileURLToPath(new URL('../node_modules/msgpackr/unpack.js', import.meta.url));

await build({
  entryPoints: ['dist/cpr/index.js'],
  outfile: 'dist/cpr/restore.cjs', // beside the modules it replaces: paths made from import.meta.url still resolve
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['ffi-rs', 'msgpackr', 'pino'], // native, or not needed until the guest runs again
  alias: { 'msgpackr/unpack': unpackOnly },
  // import() of a bundled module becomes a lazy require(): no ES module loader at all.
  supported: { 'dynamic-import': false },
  define: { 'import.meta.url': '__bundleUrl' },
  banner: { js: 'const __bundleUrl = require("node:url").pathToFileURL(__filename).href;' },
  logLevel: 'warning',
});
console.log('bundled dist/cpr/restore.cjs');
