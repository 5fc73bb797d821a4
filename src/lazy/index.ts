export * from './lazy-memory.js';
export * from './source-spec.js';
export * from './watchdog.js';
