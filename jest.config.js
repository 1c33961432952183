/** Jest runs the TypeScript sources as native ESM (see README: @unraid/libvirt is ESM-only). */
export default {
  preset: 'ts-jest/presets/default-esm',
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  transform: { '^.+\\.ts$': ['ts-jest', { useESM: true, tsconfig: 'tsconfig.json' }] },
  testTimeout: 180000,
  maxWorkers: 2,
  // After the default output, each failed test's first lines again: the tail of a long log says why it failed.
  reporters: ['default', '<rootDir>/test/failure-summary.js'],
};
