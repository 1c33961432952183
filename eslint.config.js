// Lint rules from DESIGN.md's conventions: no floating promises, consistent type imports,
// no import cycles, and the folder boundaries of the design (workflows stay deterministic).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import { importX } from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

export default tseslint.config(
  { ignores: ['node_modules/', 'dist/', 'data/', '.venv/', 'coverage/', 'test/fixtures/', '.tmp/', '.cache/', 'secrets/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  importX.flatConfigs.typescript,
  { files: ['**/*.mjs', '**/*.js'], languageOptions: { globals: { process: 'readonly', console: 'readonly' } } },
  {
    files: ['**/*.ts', '**/*.tsx'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    settings: { 'import-x/resolver-next': [createTypeScriptImportResolver()] },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'import-x/no-cycle': 'error',
    },
  },
  {
    // Workflows are replayed: no I/O, clocks or randomness except through Temporal's APIs.
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*', 'fs', 'http', 'crypto'], message: 'workflows must not do I/O; use an activity' },
            { group: ['../activities/*', '../clouds/*', '../store/*', '../api/*', '../workers/*'], message: 'workflows may import model/ and activity types only' },
            { group: ['zod'], message: 'keep zod out of the workflow bundle; import model types with `import type`' },
          ],
        },
      ],
    },
  },
  {
    files: ['model/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['../*/**', '!../model/**'], message: 'model/ is pure domain code' }] }],
    },
  },
  {
    // The web portal is a client of the REST API only: it runs in the browser, imports pure model/
    // helpers and, as types only, the API's own request and answer shapes.
    files: ['portal/**/*.ts', 'portal/**/*.tsx'],
    rules: {
      'no-restricted-imports': 'off',
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*'], message: 'the portal runs in a browser' },
            { group: ['../../api/*', '../../store/*', '../../activities/*', '../../clouds/*', '../../workers/*', '../../workflows/*'], allowTypeImports: true, message: 'the portal talks to the server over REST only (types may be imported)' },
            { group: ['zod', 'express', '@temporalio/*'], allowTypeImports: true, message: 'server-side packages stay out of the browser bundle' },
          ],
        },
      ],
    },
  },
  {
    files: ['api/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['../activities/*', '../clouds/sim*', '../workers/*'], message: 'api/ may import model/, store/ and the Temporal client' }] }],
    },
  },
  {
    // The command is a REST client (issue 15): the API's response types, never its code, nor the store's or Temporal's.
    files: ['cli/**/*.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['../api/*'], message: 'cli/ talks to the API over HTTP: import its types only', allowTypeImports: true },
            { group: ['../store/*', '../workflows/*', '../activities/*', '../clouds/*', '../workers/*'], message: 'cli/ may import model/ and the API\'s types only' },
          ],
        },
      ],
    },
  },
);
