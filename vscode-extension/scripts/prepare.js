'use strict';
// Run by `npm ci` / `npm install` (prepare) and by vsce (vscode:prepublish).
// - Copies the spec's JSON schema next to package.json: yamlValidation URLs are
//   relative to the extension folder, and a VSIX holds only that folder, so a
//   `../probe_compiler/...` path would dangle once installed. probe_compiler/
//   stays the one source; the copy is git-ignored.
// - With --package, records the clone's path in exray-root.json: an installed
//   VSIX lives under ~/.vscode/extensions, away from the clone whose .venv runs
//   the server (the default exray.serverCommand's ${exrayRoot}).
const fs = require('fs');
const path = require('path');

const here = path.resolve(__dirname, '..');
const clone = path.resolve(here, '..');
const schema = path.join(clone, 'probe_compiler', 'exray.schema.json');

fs.copyFileSync(schema, path.join(here, 'exray.schema.json'));
if (process.argv.includes('--package')) {
  fs.writeFileSync(path.join(here, 'exray-root.json'), JSON.stringify({ root: clone }) + '\n');
}
