// The object-store half of the package, `userfault/s3` (package.json
// "exports"): the S3 source, push and pull, s3:// URLs and the store's
// errors. Its own entry point so that `import 'userfault'` does not load the
// AWS SDK (a quarter of a second) for a program that never reads a store.
export * from './errors.js';
export * from './s3-url.js';
export * from './s3-source.js';
export * from './snapshot-push.js';
export * from './snapshot-pull.js';
