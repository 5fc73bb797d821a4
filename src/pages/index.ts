export * from './errors.js';
export * from './page-server.js';
export * from './reply-budget.js';
export * from './served-connection.js';
export * from './snapshot-pages.js';
export * from './zero-map.js';
export * from './page-checksums.js';
