export * from './errors.js';
export * from './format.js';
export * from './inspect.js';
export * from './reader.js';
export * from './writer.js';
export * from './object-errors.js';
export * from './object-layout.js';
