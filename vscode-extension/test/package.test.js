'use strict';
// The manifest on its own (no server, no fake vscode needed).
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { it } = require('node:test');

const here = path.resolve(__dirname, '..');
const pkg = require('../package.json');

it('yamlValidation points inside the extension at a copy of probe_compiler/exray.schema.json', () => {
  const [entry] = pkg.contributes.yamlValidation;
  assert.equal(entry.fileMatch, 'exray.yaml');
  assert.match(entry.url, /^\.\//);   // relative to the extension folder, as the YAML extension resolves it
  const copy = path.join(here, entry.url);
  assert.ok(fs.existsSync(copy), `${copy} is missing: run npm ci (or node scripts/prepare.js) in vscode-extension`);
  assert.equal(fs.readFileSync(copy, 'utf8'),
    fs.readFileSync(path.join(here, '..', 'probe_compiler', 'exray.schema.json'), 'utf8'));
  const ignored = fs.readFileSync(path.join(here, '.vscodeignore'), 'utf8');
  assert.doesNotMatch(ignored, /schema/);
});

it('vscode-languageclient is pinned to one exact version, and the lock file agrees', () => {
  const v = pkg.dependencies['vscode-languageclient'];
  assert.match(v, /^\d+\.\d+\.\d+$/);
  const lock = require('../package-lock.json');
  assert.equal(lock.packages['node_modules/vscode-languageclient'].version, v);
});
