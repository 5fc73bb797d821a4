export * from './framed-connection.js';
