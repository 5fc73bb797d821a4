// A VM served by a page server (`userfault pages serve --snapshot VM.snap`) as
// a restore source: the VM state comes from the server's metadata (the same
// JSON a VM snapshot's metadata section holds, checked by the same schema),
// the memory from a RemoteSource. Nothing is read before the guest runs: a
// lazy restore's pages arrive as the vCPUs fault on them, each checked against
// its frame's CRC on receipt, and the snapshot's own CRCs were checked by the
// server as it read them.
import { RemoteSource, type RemoteSourceOptions } from '../../sources/remote-source.js';
import { GuestMemoryUnavailableError } from '../memory/lazy-guest-memory.js';
import { InvalidVmStateError, RemoteVmRefusedError } from '../errors.js';
import type { VmRestoreSource } from './restore-source.js';
import { VM_SNAPSHOT_KIND } from './vm-snapshot.js';
import { vmStateFromJson } from './vm-state.js';

export async function openRemoteVmSource(url: string, options: RemoteSourceOptions = {}): Promise<VmRestoreSource> {
  const started = performance.now();
  const source = await RemoteSource.connect(url, options);
  try {
    const where = source.description;
    if (source.metadata.byteLength === 0) throw new RemoteVmRefusedError(where, 'it serves no VM state (was it started on a VM snapshot?)');
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(source.metadata).toString('utf8'));
    } catch (error) {
      throw new RemoteVmRefusedError(where, 'its metadata is not JSON (not a VM snapshot)', { cause: error });
    }
    const kind = typeof parsed === 'object' && parsed !== null ? (parsed as { kind?: unknown }).kind : undefined;
    if (kind !== VM_SNAPSHOT_KIND) throw new RemoteVmRefusedError(where, `its metadata kind is ${JSON.stringify(kind) ?? 'missing'}, not ${VM_SNAPSHOT_KIND}`);
    let state;
    try {
      state = vmStateFromJson((parsed as { state?: unknown }).state);
    } catch (error) {
      if (error instanceof InvalidVmStateError) throw new RemoteVmRefusedError(where, error.message, { cause: error });
      throw error;
    }
    if (source.sizeBytes !== state.machine.memoryBytes) throw new RemoteVmRefusedError(where, `its image is ${source.sizeBytes} bytes, the machine has ${state.machine.memoryBytes}`);
    return {
      description: where,
      state,
      memory: source,
      openMs: performance.now() - started,
      explain: (error) => new GuestMemoryUnavailableError(where, error),
    };
  } catch (error) {
    await source.close();
    throw error;
  }
}
