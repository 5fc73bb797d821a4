// A VM served by a page server (`userfault pages serve --snapshot VM.snap`) as
// a restore source: the VM state comes from the server's metadata (the same
// JSON a VM snapshot's metadata section holds, checked by the same schema),
// the memory from a RemoteSource. Nothing is read before the guest runs: a
// lazy restore's pages arrive as the vCPUs fault on them, each checked on
// receipt against the checksum the snapshot stores for it (sent with it), so a
// page altered on the server or on the way is refused, never installed.
import { RemoteSource, type RemoteSourceOptions } from '../../pages/remote-source.js';
import { vmRestoreSourceFromMetadata, type VmRestoreSource } from './restore-source.js';

export async function openRemoteVmSource(url: string, options: RemoteSourceOptions = {}): Promise<VmRestoreSource> {
  const started = performance.now();
  const source = await RemoteSource.connect(url, options);
  return vmRestoreSourceFromMetadata(source, source.metadata, started, 'it serves no VM state (was it started on a VM snapshot?)');
}
