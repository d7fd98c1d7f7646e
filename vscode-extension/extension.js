'use strict';
// Ex-Ray for VS Code: the Ex-Ray language server (docs/editor.md) through
// vscode-languageclient, its exray: documents, and palette commands.
const fs = require('fs');
const path = require('path');
const vscode = require('vscode');
const { LanguageClient } = require('vscode-languageclient/node');

const SCHEME = 'exray';
const SECTION = 'exray';
// LSP 3.18's request, used when the server announces it; else the server's own.
const CONTENT = 'workspace/textDocumentContent';
const CONTENT_FALLBACK = 'exray/textDocumentContent';
const CONTENT_REFRESH = 'workspace/textDocumentContent/refresh';
// The server's settings (server/lsp/workspace.py Settings); serverCommand is ours.
const SERVER_SETTINGS = ['specPath', 'snapshotsDir', 'maxHintLength', 'maxHoverValues', 'binary',
  'agents', 'agentTokenFile', 'agentCa', 'agentCert', 'agentKey', 'agentServerName', 'agentDeadline',
  'executor'];

/** The exray settings the server knows, without empty strings (`binary: ""`,
 * `agentTokenFile: ""` mean "not set", and the server would reject them as
 * empty paths). */
function serverSettings(config) {
  const out = {};
  for (const key of SERVER_SETTINGS) {
    const v = config.get(key);
    if (v !== undefined && v !== null && v !== '') out[key] = v;
  }
  return out;
}

/** The Ex-Ray clone whose .venv runs the server: $EXRAY, else the one recorded
 * when the VSIX was packaged, else the folder around this one (development
 * host, or this folder symlinked into ~/.vscode/extensions). */
function exrayRoot(extensionPath) {
  if (process.env.EXRAY) return process.env.EXRAY;
  try {
    return JSON.parse(fs.readFileSync(path.join(extensionPath, 'exray-root.json'), 'utf8')).root;
  } catch {
    return path.dirname(fs.realpathSync(extensionPath));
  }
}

function serverOptions(extensionPath, folder) {
  const vars = { exrayRoot: exrayRoot(extensionPath), workspaceFolder: folder || '' };
  const cmd = (vscode.workspace.getConfiguration(SECTION).get('serverCommand') || [])
    .map((s) => String(s).replace(/\$\{(\w+)\}/g, (m, name) => (name in vars ? vars[name] : m)));
  if (cmd.length === 0) throw new Error('exray.serverCommand is empty');
  return { command: cmd[0], args: cmd.slice(1), options: { cwd: folder || undefined } };
}

/** VS Code's Uri.toString() percent-encodes `=` and `*` in exray: URIs
 * (`?function%3Dmain.%28%2Astore%29.lookup`); the server reads the query with
 * parse_qs, so it gets them as written (`?function=main.(*store).lookup`).
 * Used for every exray: URI the client sends (documentLink, didOpen, content). */
function asServerUri(uri) {
  return uri.scheme === SCHEME ? uri.toString(true) : uri.toString();
}

/** Serves exray: documents from the server; fires onDidChange when the server
 * says one changed (a new snapshot is current). */
class ContentProvider {
  constructor(client, ready) {
    this.client = client;
    this.ready = ready;
    this.changed = new vscode.EventEmitter();
    this.onDidChange = this.changed.event;
    client.onRequest(CONTENT_REFRESH, (params) => {
      this.changed.fire(vscode.Uri.parse(params.uri));
      return null;
    });
  }

  method() {
    const ws = this.client.initializeResult && this.client.initializeResult.capabilities.workspace;
    return ws && ws.textDocumentContent ? CONTENT : CONTENT_FALLBACK;
  }

  async provideTextDocumentContent(uri, token) {
    await this.ready;
    const res = await this.client.sendRequest(this.method(), { uri: asServerUri(uri) }, token);
    return res && typeof res.text === 'string' ? res.text : '';
  }

  dispose() {
    this.changed.dispose();
  }
}

/** vscode-languageclient 9 speaks LSP 3.17: say we support 3.18's
 * workspace.textDocumentContent ourselves, so the server announces it and
 * sends workspace/textDocumentContent/refresh. Static only: 9.x would refuse a
 * dynamic registration of a method it does not know. */
const textDocumentContentFeature = {
  fillClientCapabilities(caps) {
    caps.workspace = caps.workspace || {};
    caps.workspace.textDocumentContent = { dynamicRegistration: false };
  },
  initialize() {},
  getState() { return { kind: 'static' }; },
  clear() {},
};

let client;

async function activate(context) {
  const folder = vscode.workspace.workspaceFolders && vscode.workspace.workspaceFolders[0];
  const folderPath = folder ? folder.uri.fsPath : undefined;
  client = new LanguageClient('exray', 'Ex-Ray', serverOptions(context.extensionPath, folderPath), {
    // exray: documents are in the selector so the client forwards
    // textDocument/documentLink for them: no DocumentLinkProvider of ours.
    documentSelector: [
      { scheme: 'file', language: 'go' },
      { scheme: 'file', pattern: '**/exray.yaml' },
      { scheme: SCHEME },
    ],
    synchronize: { configurationSection: SECTION },
    initializationOptions: { exray: serverSettings(vscode.workspace.getConfiguration(SECTION)) },
    uriConverters: { code2Protocol: asServerUri, protocol2Code: (s) => vscode.Uri.parse(s) },
    middleware: {
      workspace: {
        // Send `settings: null`: the server then pulls the section with
        // workspace/configuration, answered (filtered) below.
        didChangeConfiguration: (sections, next) => next(undefined),
        configuration: async (params, token, next) => {
          const result = await next(params, token);
          if (!Array.isArray(result)) return result;
          return params.items.map((item, i) => (item.section === SECTION
            ? serverSettings(vscode.workspace.getConfiguration(SECTION)) : result[i]));
        },
      },
    },
    // window/showDocument needs nothing: the client's default handler calls
    // window.showTextDocument(uri), which reads exray: URIs from our provider.
  });
  client.registerFeature(textDocumentContentFeature);
  const ready = client.start();
  // A server that cannot start is reported by the client (its output channel);
  // commands and documents that wait for it fail with that error.
  ready.catch(() => {});
  const provider = new ContentProvider(client, ready);

  async function run(command, ...args) {
    try {
      await ready;
      return await client.sendRequest('workspace/executeCommand', { command, arguments: args });
    } catch (e) {
      vscode.window.showErrorMessage(`Ex-Ray: ${command}: ${e.message || e}`);
      return undefined;
    }
  }
  // The server reports its own failures (window/showMessage); a result with
  // `error` needs nothing more.
  const ok = (r) => r && typeof r === 'object' && !r.error;

  // The server's command ids (exray.snapshot, …) are registered by the client
  // itself (executeCommandProvider), so ours have their own prefix.
  const commands = {
    'exray.vscode.snapshot': async () => {
      const r = await run('exray.snapshot');
      if (ok(r) && !r.cancelled) {
        vscode.window.showInformationMessage(
          `Ex-Ray: ${r.goroutines} goroutines in ${r.processes} process(es), ${r.seconds} s: ${r.path}`);
      }
      return r;
    },
    'exray.vscode.switchSnapshot': async () => {
      const snaps = await run('exray.listSnapshots');
      if (!Array.isArray(snaps) || snaps.length === 0) {
        vscode.window.showInformationMessage('Ex-Ray: no snapshots yet: run "Ex-Ray: Snapshot"');
        return undefined;
      }
      const pick = await vscode.window.showQuickPick(snaps.map((s) => ({
        label: s.name,
        description: (s.current ? 'current · ' : '') + new Date(s.mtime * 1000).toLocaleString(),
        detail: s.path,
        path: s.path,
      })), { placeHolder: 'Ex-Ray snapshot to use' });
      return pick ? run('exray.useSnapshot', pick.path) : undefined;
    },
    'exray.vscode.runQuery': async () => {
      const sql = await vscode.window.showInputBox({
        prompt: 'Ex-Ray: SQL on the current snapshot',
        placeHolder: 'SELECT count(*) FROM goroutines',
      });
      // The server opens exray:/query/<id> with window/showDocument.
      return sql && sql.trim() ? run('exray.runQuery', sql) : undefined;
    },
    'exray.vscode.openFlameGraph': () => run('exray.openFlameGraph'),
    'exray.vscode.openOverview': () => run('exray.openDocument', 'exray:/snapshot/overview'),
    'exray.vscode.openStacks': () => run('exray.openDocument', 'exray:/snapshot/stacks'),
  };

  context.subscriptions.push(
    provider,
    vscode.workspace.registerTextDocumentContentProvider(SCHEME, provider),
    ...Object.entries(commands).map(([id, fn]) => vscode.commands.registerCommand(id, fn)),
  );
  // For tests and other extensions: the client, the provider, our commands.
  return { client, ready, provider, commands };
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate, serverSettings, asServerUri, exrayRoot };
