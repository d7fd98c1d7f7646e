'use strict';
// A FAKE `vscode` module: the part of VS Code's API that extension.js and
// vscode-languageclient/node touch, in plain Node. It is not VS Code: no
// editor, no UI. It records what the extension asked of the UI (`fake.*`) and
// lets a test play the user (`fake.answers`). Uri is vscode-uri, the same
// class VS Code uses. Anything missing throws, naming the member.
const { URI, Utils } = require('vscode-uri');
const { EventEmitter: NodeEmitter } = require('events');

class Disposable {
  constructor(fn) { this._fn = fn; }
  static from(...items) { return new Disposable(() => items.forEach((d) => d && d.dispose && d.dispose())); }
  dispose() { if (this._fn) { this._fn(); this._fn = undefined; } }
}

class EventEmitter {
  constructor() {
    this._e = new NodeEmitter();
    this.event = (listener, thisArg, disposables) => {
      const fn = (v) => listener.call(thisArg, v);
      this._e.on('x', fn);
      const d = new Disposable(() => this._e.off('x', fn));
      if (Array.isArray(disposables)) disposables.push(d);
      return d;
    };
  }
  fire(v) { this._e.emit('x', v); }
  dispose() { this._e.removeAllListeners(); }
}

const noEvent = () => new Disposable();

class Position { constructor(line, character) { this.line = line; this.character = character; } }
class Range {
  constructor(a, b, c, d) {
    if (typeof a === 'number') { this.start = new Position(a, b); this.end = new Position(c, d); }
    else { this.start = a; this.end = b; }
  }
}
class DocumentLink { constructor(range, target) { this.range = range; this.target = target; } }
class CancellationError extends Error {}
class CodeActionKind {
  constructor(value) { this.value = value; }
  append(part) { return new CodeActionKind(this.value ? `${this.value}.${part}` : part); }
  contains(other) { return this.value === '' || other.value === this.value || other.value.startsWith(this.value + '.'); }
}
for (const [k, v] of Object.entries({ Empty: '', QuickFix: 'quickfix', Refactor: 'refactor',
  RefactorExtract: 'refactor.extract', RefactorInline: 'refactor.inline', RefactorRewrite: 'refactor.rewrite',
  Source: 'source', SourceOrganizeImports: 'source.organizeImports', SourceFixAll: 'source.fixAll' })) {
  CodeActionKind[k] = new CodeActionKind(v);
}
// Classes the language client extends or builds; they only keep their arguments.
function plain(name, ...fields) {
  return { [name]: class { constructor(...args) { fields.forEach((f, i) => { this[f] = args[i]; }); } } }[name];
}
const plainClasses = {
  CodeLens: plain('CodeLens', 'range', 'command'),
  CodeAction: plain('CodeAction', 'title', 'kind'),
  CompletionItem: plain('CompletionItem', 'label', 'kind'),
  Diagnostic: plain('Diagnostic', 'range', 'message', 'severity'),
  InlayHint: plain('InlayHint', 'position', 'label', 'kind'),
  SymbolInformation: plain('SymbolInformation', 'name', 'kind', 'containerName', 'location'),
  CallHierarchyItem: plain('CallHierarchyItem', 'kind', 'name', 'detail', 'uri', 'range', 'selectionRange'),
  TypeHierarchyItem: plain('TypeHierarchyItem', 'kind', 'name', 'detail', 'uri', 'range', 'selectionRange'),
  Location: plain('Location', 'uri', 'range'),
  MarkdownString: plain('MarkdownString', 'value', 'supportThemeIcons'),
  Hover: plain('Hover', 'contents', 'range'),
  TextEdit: plain('TextEdit', 'range', 'newText'),
  RelativePattern: plain('RelativePattern', 'base', 'pattern'),
  InlayHintLabelPart: plain('InlayHintLabelPart', 'value'),
};
class CancellationTokenSource {
  constructor() {
    const e = new EventEmitter();
    this.token = { isCancellationRequested: false, onCancellationRequested: e.event };
    this._e = e;
  }
  cancel() { this.token.isCancellationRequested = true; this._e.fire(); }
  dispose() {}
}

// What the test can look at and steer.
const configChanged = new EventEmitter();
const fake = {
  settings: {},                 // "exray.maxHintLength": 200, …
  // A settings change, as VS Code reports it to onDidChangeConfiguration.
  setSetting(key, value) {
    fake.settings[key] = value;
    configChanged.fire({ affectsConfiguration: (section) => key === section || key.startsWith(section + '.') });
  },
  workspaceFolder: undefined,   // fsPath of the one workspace folder
  providers: new Map(),         // scheme -> TextDocumentContentProvider
  commands: new Map(),          // id -> handler (ours and the language client's)
  shown: [],                    // Uris passed to window.showTextDocument
  opened: [],                   // Uris passed to env.openExternal
  messages: [],                 // [level, text] of window.show*Message
  registered: [],               // [name, selector, provider] of languages.register*Provider
  answers: { quickPick: (items) => items[0], inputBox: () => undefined },
};

function configuration(section) {
  const prefix = section ? section + '.' : '';
  const pkg = require('../package.json');
  const defaults = {};
  for (const [k, v] of Object.entries(pkg.contributes.configuration.properties)) defaults[k] = v.default;
  const all = { ...defaults, ...fake.settings };
  const get = (key, dflt) => {
    const full = prefix + key;
    if (full in all) return all[full];
    const sub = {};                       // a section as an object, as VS Code gives it
    for (const [k, v] of Object.entries(all)) if (k.startsWith(full + '.')) sub[k.slice(full.length + 1)] = v;
    return Object.keys(sub).length ? sub : dflt;
  };
  return { get, has: (key) => get(key) !== undefined, inspect: (key) => ({ key, defaultValue: defaults[prefix + key] }),
    update: async () => {} };
}

const outputChannel = (name) => ({
  name, append() {}, appendLine() {}, replace() {}, clear() {}, show() {}, hide() {}, dispose() {},
  trace() {}, debug() {}, info() {}, warn() {}, error() {}, logLevel: 2, onDidChangeLogLevel: noEvent,
});

function message(level) {
  return async (text) => { fake.messages.push([level, text]); return undefined; };
}

const api = {
  fake,
  Uri: Object.assign(URI, { joinPath: Utils.joinPath }),
  Disposable, EventEmitter, Position, Range, DocumentLink, CancellationTokenSource, CancellationError, CodeActionKind,
  ...plainClasses,
  version: '1.90.0',
  env: { appName: 'fake vscode', language: 'en', machineId: 'fake', openExternal: async (uri) => { fake.opened.push(uri); return true; } },
  workspace: {
    get workspaceFolders() {
      return fake.workspaceFolder ? [{ uri: URI.file(fake.workspaceFolder), name: 'ws', index: 0 }] : undefined;
    },
    get rootPath() { return fake.workspaceFolder; },
    name: 'ws',
    textDocuments: [],
    notebookDocuments: [],
    getConfiguration: configuration,
    getWorkspaceFolder: () => api.workspace.workspaceFolders && api.workspace.workspaceFolders[0],
    registerTextDocumentContentProvider(scheme, provider) {
      fake.providers.set(scheme, provider);
      return new Disposable(() => fake.providers.delete(scheme));
    },
    createFileSystemWatcher: () => ({ onDidCreate: noEvent, onDidChange: noEvent, onDidDelete: noEvent, dispose() {} }),
    onDidOpenTextDocument: noEvent, onDidCloseTextDocument: noEvent, onDidChangeTextDocument: noEvent,
    onDidSaveTextDocument: noEvent, onWillSaveTextDocument: noEvent, onDidChangeConfiguration: configChanged.event,
    onDidChangeWorkspaceFolders: noEvent, onDidOpenNotebookDocument: noEvent, onDidCloseNotebookDocument: noEvent,
    onDidChangeNotebookDocument: noEvent, onDidSaveNotebookDocument: noEvent,
    onDidCreateFiles: noEvent, onDidRenameFiles: noEvent, onDidDeleteFiles: noEvent,
    onWillCreateFiles: noEvent, onWillRenameFiles: noEvent, onWillDeleteFiles: noEvent,
  },
  window: {
    activeTextEditor: undefined,
    visibleTextEditors: [],
    tabGroups: { all: [], onDidChangeTabs: noEvent, onDidChangeTabGroups: noEvent },
    onDidChangeActiveTextEditor: noEvent, onDidChangeVisibleTextEditors: noEvent,
    createOutputChannel: outputChannel,
    showInformationMessage: message('info'),
    showWarningMessage: message('warning'),
    showErrorMessage: message('error'),
    async showQuickPick(items) { return fake.answers.quickPick(await items); },
    async showInputBox(options) { return fake.answers.inputBox(options); },
    // As VS Code does for a Uri: read the document (through a content provider
    // for its scheme) and show it.
    async showTextDocument(uri) {
      fake.shown.push(uri);
      const p = fake.providers.get(uri.scheme);
      if (p) await p.provideTextDocumentContent(uri, new CancellationTokenSource().token);
      return {};
    },
    withProgress: async (options, task) => task({ report() {} }, new CancellationTokenSource().token),
    createStatusBarItem: () => ({ show() {}, hide() {}, dispose() {} }),
  },
  languages: {
    match(selector, doc) {
      const sels = Array.isArray(selector) ? selector : [selector];
      return sels.some((s) => (typeof s === 'string' ? s === doc.languageId
        : (!s.language || s.language === doc.languageId) && (!s.scheme || s.scheme === doc.uri.scheme))) ? 10 : 0;
    },
    createDiagnosticCollection: () => ({ set() {}, delete() {}, clear() {}, dispose() {}, forEach() {}, get() {}, has() {} }),
  },
  commands: {
    registerCommand(id, fn) {
      if (fake.commands.has(id)) throw new Error(`command '${id}' already exists`);   // as VS Code
      fake.commands.set(id, fn);
      return new Disposable(() => fake.commands.delete(id));
    },
    async executeCommand(id, ...args) {
      const fn = fake.commands.get(id);
      if (!fn) throw new Error(`command '${id}' not found`);
      return fn(...args);
    },
  },
};

// languages.register*Provider: recorded; a test may call a provider as VS Code would.
const languages = new Proxy(api.languages, {
  get(target, name) {
    if (name in target) return target[name];
    if (typeof name === 'string' && name.startsWith('register')) {
      return (selector, provider) => { fake.registered.push([name, selector, provider]); return new Disposable(); };
    }
    return undefined;
  },
});

// Enums the language client reads; plain numbers are enough for it.
const enums = ['DiagnosticSeverity', 'CompletionItemKind', 'SymbolKind', 'ProgressLocation', 'FoldingRangeKind',
  'CodeActionTriggerKind', 'InlayHintKind', 'TextDocumentSaveReason', 'SignatureHelpTriggerKind',
  'CompletionTriggerKind', 'DocumentHighlightKind', 'SymbolTag', 'CompletionItemTag', 'DiagnosticTag',
  'TextEditorRevealType', 'ViewColumn', 'ConfigurationTarget', 'EndOfLine', 'IndentAction', 'LogLevel',
  'UIKind', 'NotebookCellKind', 'FileType', 'InlineCompletionTriggerKind'];
for (const e of enums) api[e] = new Proxy({}, { get: (t, n) => (typeof n === 'string' ? 1 : undefined) });

module.exports = new Proxy({ ...api, languages }, {
  get(target, name) {
    if (name in target || typeof name !== 'string' || name === 'then' || name === '__esModule') return target[name];
    throw new Error(`fake vscode: vscode.${name} is not faked`);
  },
});
