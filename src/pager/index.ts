export * from './address-map.js';
export * from './metrics.js';
export * from './needed-pages.js';
export * from './page-state.js';
export * from './pager.js';
export * from './readahead.js';
export * from './pager-host.js';
export * from './page-cache.js';
