export * from './errors.js';
export * from './lazy-memory.js';
export * from './lazy-wasm-memory.js';
export * from './source-spec.js';
export * from './wasm-reservation.js';
export * from './watchdog.js';
