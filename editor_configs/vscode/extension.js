// pie-lsp for VS Code: starts the server and lets vscode-languageclient turn its
// textDocument/inlineCompletion answers into ghost text.
'use strict';

const vscode = require('vscode');
const { LanguageClient, TransportKind } = require('vscode-languageclient/node');

let client;

async function activate(context) {
  const server = vscode.workspace.getConfiguration('pieLspServer');
  const serverOptions = {
    command: server.get('command', 'pie-lsp'),
    args: server.get('args', []),
    transport: TransportKind.stdio,
  };
  const clientOptions = {
    documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
    // Every "pieLsp.*" setting, sent at start and again on each change.
    initializationOptions: { pieLsp: vscode.workspace.getConfiguration().get('pieLsp') },
    synchronize: { configurationSection: 'pieLsp' },
  };
  client = new LanguageClient('pieLsp', 'pie-lsp', serverOptions, clientOptions);
  // Inline completion is an LSP 3.18 feature: without this the client never asks for it.
  client.registerProposedFeatures();

  context.subscriptions.push(
    vscode.commands.registerCommand('pieLsp.showStats', async () => {
      const editor = vscode.window.activeTextEditor;
      const uri = editor ? editor.document.uri.toString() : undefined;
      const stats = await client.sendRequest('workspace/executeCommand', {
        command: 'pie-lsp.stats',
        arguments: uri ? [uri] : [],
      });
      const document = await vscode.workspace.openTextDocument({
        language: 'json',
        content: JSON.stringify(stats, null, 2),
      });
      await vscode.window.showTextDocument(document, { preview: true });
    }),
  );
  await client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
