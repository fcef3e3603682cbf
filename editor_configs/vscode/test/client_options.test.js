// @ts-check
'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');
const { test } = require('node:test');

const options = require('../client_options');
const manifest = require('../package.json');

test('the server comes from the setting first', () => {
  const found = options.findServer({
    configured: ' /opt/pie/bin/pie-lsp ',
    extensionPath: '/x/editor_configs/vscode',
    isExecutable: () => true,
  });
  assert.deepEqual(found, { command: '/opt/pie/bin/pie-lsp', source: 'setting' });
});

test("then the repository's .venv, then PATH, else nothing", () => {
  const venv = path.resolve('/repo/.venv/bin/pie-lsp');
  const onPath = path.join('/usr/local/bin', 'pie-lsp');
  const extensionPath = '/repo/editor_configs/vscode';
  assert.deepEqual(
    options.findServer({ extensionPath, envPath: '/usr/local/bin', isExecutable: (f) => f === venv }),
    { command: venv, source: 'repository' },
  );
  assert.deepEqual(
    options.findServer({ extensionPath, envPath: `/nope${path.delimiter}/usr/local/bin`, isExecutable: (f) => f === onPath }),
    { command: onPath, source: 'PATH' },
  );
  assert.equal(options.findServer({ extensionPath, envPath: '/usr/bin', isExecutable: () => false }), null);
});

test('only the model languages reach the server', () => {
  const built = options.clientOptions({ languages: ['python'], settings: { maxNewTokens: 24 } });
  assert.deepEqual(built.documentSelector, [
    { scheme: 'file', language: 'python' },
    { scheme: 'untitled', language: 'python' },
  ]);
  assert.deepEqual(built.initializationOptions, { pieLsp: { maxNewTokens: 24 } });
  assert.equal(built.synchronize.configurationSection, 'pieLsp');
  assert.deepEqual(options.documentSelector([]), options.documentSelector(options.DEFAULT_LANGUAGES));
});

test('server settings keep only known keys that are set', () => {
  /** @type {Record<string, unknown>} */
  const values = { strategy: 'pie', maxNewTokens: 32, colour: 'blue', staleBudget: null };
  const settings = options.serverSettings({ get: (key) => values[key] });
  assert.deepEqual(settings, { strategy: 'pie', maxNewTokens: 32 });
});

test('every server setting is documented in package.json with its range', () => {
  /** @type {Record<string, any>} */
  const properties = Object.assign(
    {},
    ...manifest.contributes.configuration.map((section) => section.properties),
  );
  for (const key of options.SERVER_SETTINGS) {
    const property = properties[`pieLsp.${key}`];
    assert.ok(property, `pieLsp.${key} is not in package.json`);
    assert.ok(property.markdownDescription || property.description, `pieLsp.${key} has no description`);
    if (property.type === 'integer' || property.type === 'number') {
      const bounded = 'maximum' in property || 'exclusiveMaximum' in property;
      assert.ok('minimum' in property && bounded, `pieLsp.${key} has no range`);
    } else if (property.type !== 'boolean') {
      assert.ok(Array.isArray(property.enum), `pieLsp.${key} lists no values`);
    }
  }
});
