'use strict';
// extension.js in a FAKE vscode (test-support/fake-vscode.js: no editor, no UI) with
// the REAL vscode-languageclient talking to the REAL Ex-Ray language server
// over stdio. VS Code itself is not here: these tests check the extension's
// wiring and the wire protocol, not VS Code's rendering.
//
// Needs (tests/test_vscode_extension.py sets them up):
//   EXRAY_TEST_WORKSPACE  a Go workspace (go.mod, exray.yaml) with a snapshot
//   EXRAY_TEST_SNAPSHOT   that snapshot (.sqlite, in the workspace's snapshots folder)
//   EXRAY_TEST_SNAPSHOT2  a second snapshot in the same folder
//   EXRAY_TEST_PYTHON     the python that runs `-m server.lsp`
const assert = require('node:assert/strict');
const path = require('node:path');
const Module = require('node:module');
const { describe, it, before, after } = require('node:test');

// Outside test/: `node --test test` runs every .js file under test/.
const FAKE = path.join(__dirname, '..', 'test-support', 'fake-vscode.js');
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  return request === 'vscode' ? FAKE : resolve.call(this, request, ...rest);
};
const vscode = require('vscode');
// What VS Code loads: package.json's main, the esbuild bundle (npm ci / npm run bundle makes it).
const extension = require(path.join('..', require('../package.json').main));
const { fake } = vscode;

const env = process.env;
const missing = ['EXRAY_TEST_WORKSPACE', 'EXRAY_TEST_SNAPSHOT', 'EXRAY_TEST_SNAPSHOT2', 'EXRAY_TEST_PYTHON']
  .filter((k) => !env[k]);
const skip = missing.length ? `needs ${missing.join(', ')} (run by tests/test_vscode_extension.py)` : false;

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  })]).finally(() => clearTimeout(timer));
}

function content(uri) {
  const p = fake.providers.get('exray');
  return p.provideTextDocumentContent(vscode.Uri.parse(uri), new vscode.CancellationTokenSource().token);
}

describe('fake vscode + real language server', { skip }, () => {
  const subscriptions = [];
  let api;

  before(async () => {
    fake.workspaceFolder = env.EXRAY_TEST_WORKSPACE;
    fake.settings = {
      'exray.serverCommand': [env.EXRAY_TEST_PYTHON, '-m', 'server.lsp'],
      'exray.maxHintLength': 200,
    };
    api = await extension.activate({ subscriptions, extensionPath: path.resolve(__dirname, '..') });
    await withTimeout(api.ready, 30000, 'the server to start');
  });

  after(async () => {
    await withTimeout(extension.deactivate(), 10000, 'the server to stop');
    subscriptions.forEach((d) => d.dispose());
  });

  it('fake vscode: the server announces workspace/textDocumentContent for exray: (our capability)', () => {
    const ws = api.client.initializeResult.capabilities.workspace;
    assert.deepEqual(ws.textDocumentContent.schemes, ['exray']);
    assert.equal(api.provider.method(), 'workspace/textDocumentContent');
  });

  it('fake vscode: exray:/snapshot/overview through the content provider', async () => {
    const text = await withTimeout(content('exray:/snapshot/overview'), 20000, 'the overview');
    assert.match(text, /^Ex-Ray snapshot/);
    // The fallback request serves the same text.
    const res = await api.client.sendRequest('exray/textDocumentContent', { uri: 'exray:/snapshot/overview' });
    assert.equal(res.text, text);
  });

  it('fake vscode: our commands and the server\'s are both registered, without a clash', () => {
    for (const id of ['exray.vscode.snapshot', 'exray.vscode.switchSnapshot', 'exray.vscode.runQuery',
      'exray.vscode.openFlameGraph', 'exray.vscode.openOverview', 'exray.vscode.openStacks',
      'exray.snapshot', 'exray.listSnapshots', 'exray.openDocument']) {
      assert.ok(fake.commands.has(id), id);
    }
    const pkg = require('../package.json');
    assert.deepEqual(pkg.contributes.commands.map((c) => c.command).sort(),
      Object.keys(api.commands).sort());
  });

  it('fake vscode: Switch Snapshot lists snapshots (exray.listSnapshots) and uses the pick', async () => {
    let offered;
    fake.answers.quickPick = (items) => {
      offered = items;
      return items.find((i) => i.path === env.EXRAY_TEST_SNAPSHOT);
    };
    const res = await withTimeout(vscode.commands.executeCommand('exray.vscode.switchSnapshot'), 20000, 'switch');
    const paths = offered.map((i) => i.path).sort();
    assert.deepEqual(paths, [env.EXRAY_TEST_SNAPSHOT, env.EXRAY_TEST_SNAPSHOT2].sort());
    assert.equal(res.path, env.EXRAY_TEST_SNAPSHOT);
    // The raw command round-trip says the same.
    const list = await api.client.sendRequest('workspace/executeCommand', { command: 'exray.listSnapshots', arguments: [] });
    assert.deepEqual(list.filter((s) => s.current).map((s) => s.path), [env.EXRAY_TEST_SNAPSHOT]);
  });

  it('fake vscode: a new current snapshot makes the server send refresh, and the provider fires onDidChange', async () => {
    await content('exray:/snapshot/overview');          // the server now knows we read it
    const changed = new Promise((resolve) => {
      const d = api.provider.onDidChange((uri) => { d.dispose(); resolve(uri); });
    });
    fake.answers.quickPick = (items) => items.find((i) => i.path === env.EXRAY_TEST_SNAPSHOT2);
    await vscode.commands.executeCommand('exray.vscode.switchSnapshot');
    const uri = await withTimeout(changed, 20000, 'workspace/textDocumentContent/refresh');
    assert.equal(uri.scheme, 'exray');
    assert.equal(uri.toString(true), 'exray:/snapshot/overview');
  });

  it('fake vscode: Run Query (input box) -> window/showDocument opens exray:/query/<id> through the provider', async () => {
    fake.answers.inputBox = () => 'SELECT count(*) AS n FROM goroutines';
    const before = fake.shown.length;
    const res = await withTimeout(vscode.commands.executeCommand('exray.vscode.runQuery'), 20000, 'runQuery');
    assert.match(res.uri, /^exray:\/query\/\d+$/);
    const shown = fake.shown.slice(before).map((u) => u.toString(true));
    assert.deepEqual(shown, [res.uri]);        // the language client's default showDocument did it
    assert.equal(await content(res.uri), res.text);
    assert.match(res.text, /\bn\b/);
  });

  it('fake vscode: Open Overview and Open Stacks go through exray.openDocument and showDocument', async () => {
    const before = fake.shown.length;
    await vscode.commands.executeCommand('exray.vscode.openOverview');
    await vscode.commands.executeCommand('exray.vscode.openStacks');
    assert.deepEqual(fake.shown.slice(before).map((u) => u.toString(true)),
      ['exray:/snapshot/overview', 'exray:/snapshot/stacks']);
  });

  it('fake vscode: the client forwards textDocument/documentLink for exray: documents (encoded query kept readable)', async () => {
    const reg = fake.registered.find(([name]) => name === 'registerDocumentLinkProvider');
    assert.ok(reg, 'no document link provider registered by the client');
    assert.ok(reg[1].some((s) => s.scheme === 'exray'), JSON.stringify(reg[1]));
    // A function name with the characters VS Code's Uri.toString() escapes.
    const uri = vscode.Uri.parse('exray:/snapshot/stacks?function=main.handle');
    const text = await content(uri.toString(true));
    const doc = { uri, languageId: 'plaintext', version: 1, getText: () => text };
    const links = await reg[2].provideDocumentLinks(doc, new vscode.CancellationTokenSource().token);
    assert.ok(links.length > 0, text);
    // The filter holds (VS Code's own Uri.toString() would send `function%3Dmain.handle`,
    // which the server reads as no filter): fewer stacks than the whole, and
    // exactly the links the server gives for the URI as written.
    assert.ok(text.length < (await content('exray:/snapshot/stacks')).length);
    const raw = await api.client.sendRequest('textDocument/documentLink',
      { textDocument: { uri: 'exray:/snapshot/stacks?function=main.handle' } });
    assert.deepEqual(links.map((l) => [l.range.start.line, l.range.start.character, l.target.toString(true)]),
      raw.map((l) => [l.range.start.line, l.range.start.character, vscode.Uri.parse(l.target).toString(true)]));
    const lines = text.split('\n');
    for (const l of links) {
      const t = l.target.toString(true);
      assert.match(t, /^(file:\/\/\/.*#L\d+|exray:\/goroutine\/\d+\/\d+)$/, t);
      assert.ok(l.range.end.character <= lines[l.range.start.line].length);
    }
    assert.ok(links.some((l) => l.target.scheme === 'file' && l.target.fsPath.endsWith('main.go')));
  });

  it('fake vscode: settings reach the server (pulled with workspace/configuration), serverCommand and empty paths left out', async () => {
    assert.deepEqual(extension.serverSettings(vscode.workspace.getConfiguration('exray')),
      { specPath: 'exray.yaml', snapshotsDir: '.exray/snapshots', maxHintLength: 200, maxHoverValues: 50,
        agents: [], agentDeadline: 30, executor: 'auto' });
    // Nothing so far (initializationOptions, the first pull) made the server complain.
    assert.deepEqual(fake.messages.filter(([, text]) => /setting/.test(text)), []);
    // A bad value, changed as in the Settings editor: the server pulls it and says so.
    fake.setSetting('exray.maxHintLength', 5);
    const deadline = Date.now() + 10000;
    let said;
    while (!(said = fake.messages.find(([, text]) => /maxHintLength/.test(text))) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    fake.setSetting('exray.maxHintLength', 200);
    assert.ok(said, JSON.stringify(fake.messages));
    assert.equal(said[0], 'warning');
    assert.match(said[1], /between 20 and 2000/);
    assert.deepEqual(fake.messages.filter(([, text]) => /unknown Ex-Ray setting|non-empty path/.test(text)), []);
  });
});
