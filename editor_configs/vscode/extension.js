// @ts-check
// pie-lsp for VS Code: starts the server, shows its state in the status bar, and lets
// vscode-languageclient turn its textDocument/inlineCompletion answers into ghost text.
'use strict';

const vscode = require('vscode');
const { LanguageClient, TransportKind } = require('vscode-languageclient/node');
const { clientOptions, findServer, serverSettings } = require('./client_options');

/** @type {LanguageClient | undefined} */
let client;
/** @type {vscode.StatusBarItem} */
let status;
/** @type {vscode.LogOutputChannel} */
let output;
let modelState = 'not started';
/** @type {number | undefined} */
let lastLatencyMs;

// The statistics open as a read-only document of this scheme: an untitled one asked to be
// saved every time it was closed.
const STATS_SCHEME = 'pie-lsp-stats';
const STATS_URI = vscode.Uri.from({ scheme: STATS_SCHEME, path: '/pie-lsp statistics.json' });
let statsText = '{}';
const statsChanged = new vscode.EventEmitter();

function showStatus() {
  const latency = lastLatencyMs === undefined ? '' : ` ${Math.round(lastLatencyMs)} ms`;
  if (modelState === 'ready') {
    status.text = `$(check) pie-lsp${latency}`;
    status.tooltip = 'pie-lsp: model ready. Click for cache statistics.';
  } else if (modelState === 'loading' || modelState === 'not loaded' || modelState === 'starting') {
    status.text = '$(sync~spin) pie-lsp: loading model';
    status.tooltip = 'pie-lsp: the model is loading; suggestions start once it is ready.';
  } else {
    status.text = '$(error) pie-lsp';
    status.tooltip = `pie-lsp: ${modelState}. Click for details.`;
  }
  status.show();
}

/** @param {vscode.ExtensionContext} context */
function createClient(context) {
  const server = vscode.workspace.getConfiguration('pieLspServer');
  const found = findServer({
    configured: server.get('command', ''),
    extensionPath: context.extensionPath,
    envPath: process.env.PATH,
  });
  if (!found) {
    modelState = 'no server found';
    showStatus();
    vscode.window
      .showErrorMessage(
        'pie-lsp: no server found. Set "pieLspServer.command" to your pie-lsp executable ' +
          '(scripts/setup in the pie-lsp repository creates .venv/bin/pie-lsp).',
        'Open Settings',
      )
      .then((choice) => {
        if (choice) {
          vscode.commands.executeCommand('workbench.action.openSettings', 'pieLspServer.command');
        }
      });
    return undefined;
  }
  output.info(`starting ${found.command} (from the ${found.source})`);
  const serverOptions = {
    command: found.command,
    args: server.get('args', []),
    transport: TransportKind.stdio,
  };
  /** @type {import('vscode-languageclient/node').Middleware} */
  const middleware = {
    // The ghost text already shows the suggestion: an item in the suggest menu showed it twice,
    // and Enter after "(" or "," took it instead of breaking the line.
    provideCompletionItem: () => [],
    provideInlineCompletionItems: async (document, position, inlineContext, token, next) => {
      const started = Date.now();
      const result = await next(document, position, inlineContext, token);
      const items = Array.isArray(result) ? result : result && result.items;
      // The latency of an answer with nothing to show says nothing about the ghost text.
      if (!token.isCancellationRequested && items && items.length > 0) {
        lastLatencyMs = Date.now() - started;
        showStatus();
      }
      return result;
    },
  };
  const options = {
    ...clientOptions({
      languages: server.get('languages', ['python']),
      settings: serverSettings(vscode.workspace.getConfiguration('pieLsp')),
    }),
    outputChannel: output,
    middleware,
  };
  const created = new LanguageClient('pieLsp', 'pie-lsp', serverOptions, options);
  created.onNotification('pie-lsp/modelState', (/** @type {{state: string}} */ params) => {
    modelState = params.state;
    showStatus();
    if (modelState === 'ready') {
      // Whatever was asked while the model loaded got nothing: ask again at the cursor.
      vscode.commands.executeCommand('editor.action.inlineSuggest.trigger');
    }
  });
  return created;
}

/** @param {vscode.ExtensionContext} context */
async function start(context) {
  modelState = 'starting';
  lastLatencyMs = undefined;
  showStatus();
  client = createClient(context);
  if (client) {
    await client.start();
  }
}

async function stop() {
  const running = client;
  client = undefined;
  if (running) {
    await running.stop();
  }
}

/** @param {vscode.ExtensionContext} context */
async function activate(context) {
  output = vscode.window.createOutputChannel('pie-lsp', { log: true });
  status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status.command = 'pieLsp.showStats';
  context.subscriptions.push(output, status, statsChanged);
  context.subscriptions.push(
    vscode.workspace.registerTextDocumentContentProvider(STATS_SCHEME, {
      onDidChange: statsChanged.event,
      provideTextDocumentContent: () => statsText,
    }),
    vscode.commands.registerCommand('pieLsp.showStats', async () => {
      if (!client) {
        vscode.window.showWarningMessage(`pie-lsp is not running (${modelState}).`);
        return;
      }
      const editor = vscode.window.activeTextEditor;
      const uri = editor ? editor.document.uri.toString() : undefined;
      const stats = await client.sendRequest('workspace/executeCommand', {
        command: 'pie-lsp.stats',
        arguments: uri ? [uri] : [],
      });
      statsText = JSON.stringify(stats, null, 2);
      statsChanged.fire(STATS_URI);
      const document = await vscode.workspace.openTextDocument(STATS_URI);
      await vscode.window.showTextDocument(document, { preview: true });
    }),
    vscode.commands.registerCommand('pieLsp.restart', async () => {
      await stop();
      await start(context);
    }),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      // pieLsp.* reach the running server through didChangeConfiguration; the server command,
      // its arguments and the languages need a new one.
      if (event.affectsConfiguration('pieLspServer')) {
        await stop();
        await start(context);
      }
    }),
  );
  await start(context);
}

function deactivate() {
  return stop();
}

module.exports = { activate, deactivate };
