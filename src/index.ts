export * from './errno.js';
export * from './uffd/index.js';
export * from './mem/index.js';
export * from './pager/index.js';
export * from './sources/page-source.js';
export * from './sources/zero-source.js';
export * from './sources/buffer-source.js';
export * from './sources/function-source.js';
export * from './sources/snapshot-source.js';
export * from './sources/raw-file-source.js';
export * from './snapshot/index.js';
export * from './lazy/index.js';
export * from './handler/index.js';
// The page protocol's codec as a namespace: its encodeMessage/decodeMessage are not the uffd ones.
export * as pageProtocol from './protocol/index.js';
export * from './net/address.js';
export * from './pages/index.js';
export * from './pages/remote-source.js';
export * from './sources/read-errors.js';
export * from './source-url/open-source-by-url.js';
export * from './source-url/errors.js';
// A network source's outages (onAvailability, availabilityStats) and the words the CLI says them in.
export type { AvailabilityEvent, AvailabilityEventType, AvailabilityState, AvailabilityStats, ObservableAvailability } from './sources/network/availability.js';
export * from './sources/network/availability-text.js';
