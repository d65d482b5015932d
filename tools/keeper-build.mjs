// Build step (run by `npm run build`, hence by `npm install`): compiles the address-space keeper
// (src/native/keeper.c; why it exists is written there) into dist/native/libminivmm-keeper.so
// with the system gcc, which the toy guests already need. A failed build fails `npm install`.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'src', 'native', 'keeper.c');
const output = join(root, 'dist', 'native', 'libminivmm-keeper.so');
const newer = (a, b) => statSync(a).mtimeMs >= statSync(b).mtimeMs;

if (existsSync(output) && newer(output, source) && newer(output, fileURLToPath(import.meta.url))) {
  console.log(`keeper: up to date: ${relative(root, output)}`);
  process.exit(0);
}
mkdirSync(dirname(output), { recursive: true });
const r = spawnSync('gcc', ['-O2', '-g', '-shared', '-fPIC', '-fvisibility=default', '-Wall', '-Wextra', '-Werror', '-o', output, source], { encoding: 'utf8' });
if (r.status !== 0) {
  process.stderr.write(`keeper: gcc failed building ${relative(root, output)}:\n${r.stderr || r.error?.message}\n`);
  process.exit(1);
}
console.log(`keeper: built ${relative(root, output)}`);
