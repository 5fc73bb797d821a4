// The done port as a device (device.ts): a write ends the guest with a status; nothing to save.
import { InvalidVmStateError } from '../../errors.js';
import type { DeviceModel } from '../device.js';
import { DebugExit } from './debug-exit.js';

export interface DebugExitConfig {
  port: number;
}

export const debugExitModel: DeviceModel<DebugExitConfig, null> = {
  kind: 'debug-exit',
  ports: (config) => ({ base: config.port, length: 1 }),
  create: (_config, io) => new DebugExit((status) => io.guestDone(status)),
  stateToJson: () => null,
  stateFromJson(json, path) {
    if (json !== null) throw new InvalidVmStateError(path, 'must be null: the debug-exit device has no state');
    return null;
  },
};
