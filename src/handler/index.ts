export * from './client-session.js';
export * from './errors.js';
export * from './handler-server.js';
export * from './handshake.js';
export * from './memory-file.js';
export * from './report.js';
