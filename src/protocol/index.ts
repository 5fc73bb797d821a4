export * from './wire.js';
export * from './errors.js';
export * from './frame-decoder.js';
export * from './messages.js';
export * from './hello.js';
export * from './codec.js';
export * from './payload-pool.js';
