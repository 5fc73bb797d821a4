// The vm commands' words for a guest that arrived by live migration: vm
// status names where it came from once, and vm receive's running line splits
// this side's own time from its wait for the source (without KVM: the
// formatting of what a destination VMM reports).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatEvent, formatStatus, switchoverWords } from '../../src/cli/vm-commands.js';
import type { DestinationProgress } from '../../src/migrate/destination-migration.js';
import type { HostedVmStatus } from '../../src/vmm-host/hosted-vm.js';

const destination: DestinationProgress = {
  role: 'destination', state: 'postcopy', receivedBytes: 1 << 20, dataPagesReceived: 200, zeroPagesReceived: 56, rounds: 2, stalePages: 3,
  demandReads: 167, backgroundReads: 378, pushedPages: 4000, elapsedMs: 6600, loadMs: 12.3, resumeMs: 0.8, runsGuest: true,
};

const restore = { mode: 'lazy' as const, source: 'live migration from 127.0.0.1:40000', openedMs: 0, builtMs: 0, memoryMs: 1, readyMs: 3.1 };

describe('a migrated guest in the vm commands\' words', () => {
  test('vm status names where it came from once, and says post-copy, not "restored eager from migration from migration connection from"', () => {
    const status = { state: 'running', memoryBytes: 256 << 20, vcpus: [], exitReason: undefined, restore, migration: destination } as unknown as HostedVmStatus;
    const text = formatStatus(status).join('\n');
    assert.doesNotMatch(text, /from migration from|migration connection from|restored (eager|lazy) from live/);
    assert.match(text, /^live migration from 127\.0\.0\.1:40000, post-copy \(pages not here yet are fetched as the guest needs them\)$/m);
    assert.match(text, /post-copy 167 demand reads, 378 read-ahead reads, 4000 pages pushed/);
  });

  test('vm receive\'s running line gives this side\'s own load and start apart from its wait for the source', () => {
    const [line] = formatEvent({ event: 'running', command: 'receive', readyMs: 6500, resumedMs: 6513.1, restore, incoming: { loadMs: 12.3, resumeMs: 0.8, waitedMs: 6500 } });
    assert.doesNotMatch(line!, /resumed in 6513/);
    assert.match(line!, /loaded its state in 12\.3 ms and started it in 0\.8 ms, after 6\.50 s waiting for the source/);
  });

  test('how pre-copy ended, in words for every reason', () => {
    assert.equal(switchoverWords({ mode: 'postcopy', round: 0, switchoverReason: 'mode', state: 'completed' }), 'post-copy from the start (--mode postcopy)');
    assert.equal(switchoverWords({ mode: 'hybrid', round: 1, switchoverReason: 'converged', state: 'completed' }), 'stop-and-copy once pre-copy converged, after 1 pre-copy round');
    assert.equal(switchoverWords({ mode: 'hybrid', round: 10, switchoverReason: 'rounds-exhausted', state: 'completed' }), 'post-copy after 10 pre-copy rounds (--max-rounds) without converging');
    assert.match(switchoverWords({ mode: 'precopy', round: 4, switchoverReason: 'not-converging', state: 'completed' }), /^stop-and-copy after 4 pre-copy rounds: the guest dirtied/);
  });
});

describe('--pattern, one set of words for demo and vm run', () => {
  test('sequential (or seq) and random are taken by both; the guest is told seq', async () => {
    const { patternArg } = await import('../../src/cli/parse.js');
    const { guestCmdline } = await import('../../src/cli/vm-commands.js');
    assert.equal(patternArg('sequential'), 'sequential');
    assert.equal(patternArg('seq'), 'sequential');
    assert.equal(patternArg('random'), 'random');
    assert.throws(() => patternArg('zigzag'), /sequential \(or seq\) or random/);
    assert.equal(guestCmdline({ workload: 'writer', pattern: patternArg('sequential') }), 'workload=writer pattern=seq');
    const { runWith } = await import('./helpers.js');
    const demo = runWith({}, 'demo', '--size', '1M', '--pattern', 'seq', '--json');
    assert.equal(demo.status, 0, demo.stderr);
    const vm = runWith({}, 'vm', 'run', '--pattern', 'zigzag');
    assert.equal(vm.status, 64);
    assert.match(vm.stderr, /--pattern.*sequential \(or seq\) or random/);
  });
});
