import type { Command } from 'commander';
import { UFFD_FEATURE, Userfaultfd } from '../uffd/index.js';

export function registerProbeCommand(program: Command): void {
  program
    .command('probe')
    .description('what this kernel offers: userfaultfd features and ioctls, and how a uffd is created')
    .option('--json', 'print as JSON')
    .action((options: { json?: boolean }) => {
      const offer = Userfaultfd.probe();
      const report = {
        via: offer.via,
        features: [...offer.features],
        unknownFeatureBits: `0x${(offer.rawFeatures & ~knownMask()).toString(16)}`,
        ioctls: [...offer.ioctls],
      };
      if (options.json) console.log(JSON.stringify(report, null, 2));
      else {
        console.log(`userfaultfd via ${report.via === 'device' ? '/dev/userfaultfd' : 'the userfaultfd syscall'}`);
        console.log(`features: ${report.features.join(' ')}`);
        console.log(`unknown feature bits: ${report.unknownFeatureBits}`);
        console.log(`api ioctls: ${report.ioctls.join(' ')}`);
      }
    });
}

function knownMask(): bigint {
  return Object.values(UFFD_FEATURE).reduce((mask, bit) => mask | bit, 0n);
}
