// A VM snapshot pushed to object storage (`userfault snapshot push VM.snap
// s3://BUCKET/KEY`) as a restore source: the VM state from the object's
// metadata (the snapshot's own, verbatim in the index), the memory from an
// S3Source. Nothing but the index is read before the guest runs; each chunk
// is checked against its SHA-256 as it arrives (there is no verifyAll: it
// would fetch the whole object).
import { S3Source, type S3SourceOptions } from '../../s3/s3-source.js';
import { vmRestoreSourceFromMetadata, type VmRestoreSource } from './restore-source.js';

export async function openS3VmSource(url: string, options: S3SourceOptions = {}): Promise<VmRestoreSource> {
  const started = performance.now();
  const source = await S3Source.open(url, options);
  return vmRestoreSourceFromMetadata(source, source.metadata, started, 'its snapshot has no VM state (was it pushed from a VM snapshot?)');
}
