// @ts-check
// What the extension hands vscode-languageclient, as plain functions of the settings and the
// file system, so they are unit-tested without VS Code (test/client_options.test.js).
'use strict';

const fs = require('fs');
const path = require('path');

/** The languages the shipped default model knows. */
const DEFAULT_LANGUAGES = ['python'];

/** Every pieLsp.* setting the server reads (see lsp_server/README.md). */
const SERVER_SETTINGS = [
  'strategy',
  'debounceMs',
  'maxNewTokens',
  'maxPromptTokens',
  'suffixShare',
  'windowMarginLines',
  'memoryBudgetMb',
  'fimLayout',
  'staleBudget',
  'maxRefreshTokens',
  'maxRefreshMs',
  'refreshAfterEdit',
  'idleRefreshMs',
  'maxRegions',
  'midLine',
  'speculativeTokens',
  'healTokens',
  'minConfidence',
  'minTokenProb',
  'documentNgramWeight',
];

/**
 * @param {string} file
 * @returns {boolean}
 */
function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * Where the server is: the `pieLspServer.command` setting when set, else the repository's
 * .venv when the extension runs from editor_configs/vscode of a pie-lsp checkout, else
 * `pie-lsp` on PATH.
 *
 * @param {{configured?: string, extensionPath: string, envPath?: string,
 *          isExecutable?: (file: string) => boolean}} where
 * @returns {{command: string, source: 'setting' | 'repository' | 'PATH'} | null}
 */
function findServer({ configured, extensionPath, envPath, isExecutable: executable = isExecutable }) {
  if (configured && configured.trim()) {
    return { command: configured.trim(), source: 'setting' };
  }
  const repository = path.resolve(extensionPath, '..', '..', '.venv', 'bin', 'pie-lsp');
  if (executable(repository)) {
    return { command: repository, source: 'repository' };
  }
  for (const directory of (envPath || '').split(path.delimiter)) {
    if (directory && executable(path.join(directory, 'pie-lsp'))) {
      return { command: path.join(directory, 'pie-lsp'), source: 'PATH' };
    }
  }
  return null;
}

/**
 * Documents the server sees: files and untitled buffers of the model's languages only, so
 * settings.json, output panes and the stats view never reach the model.
 *
 * @param {string[]} languages
 */
function documentSelector(languages) {
  const chosen = languages.length ? languages : DEFAULT_LANGUAGES;
  return chosen.flatMap((language) => [
    { scheme: 'file', language },
    { scheme: 'untitled', language },
  ]);
}

/**
 * The pieLsp section with only the keys the server knows and the user set.
 *
 * @param {{get: (key: string) => unknown}} section
 * @returns {Record<string, unknown>}
 */
function serverSettings(section) {
  /** @type {Record<string, unknown>} */
  const settings = {};
  for (const key of SERVER_SETTINGS) {
    const value = section.get(key);
    if (value !== undefined && value !== null) {
      settings[key] = value;
    }
  }
  return settings;
}

/**
 * @param {{languages: string[], settings: Record<string, unknown>}} options
 */
function clientOptions({ languages, settings }) {
  return {
    documentSelector: documentSelector(languages),
    initializationOptions: { pieLsp: settings },
    synchronize: { configurationSection: 'pieLsp' },
  };
}

module.exports = {
  DEFAULT_LANGUAGES,
  SERVER_SETTINGS,
  clientOptions,
  documentSelector,
  findServer,
  serverSettings,
};
