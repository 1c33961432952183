/* global require, exports */
/**
 * The worker's failure converter: Temporal's default one with `encodeCommonAttributes`, so a
 * failure's message and stack trace travel as an `encodedAttributes` payload — which the
 * payload codec encrypts (model/payload-codec.ts) — instead of as plaintext fields of the
 * failure. (Activity errors name repositories, instances and cloud answers.) The workflow
 * sandbox and the worker's main thread both load it by path (`failureConverterPath`), hence
 * plain CommonJS; clients build the same converter in `payloadDataConverter`.
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { DefaultFailureConverter } = require('@temporalio/common');

exports.failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
