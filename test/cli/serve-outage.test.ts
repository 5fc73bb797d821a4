// `userfault serve --from tcp://…` when its page server goes away and comes
// back: the outage is in its log as it begins and as it ends (text and JSON),
// and in its /metrics; real processes and sockets, no client needed (the
// connections to the page server are lost all the same).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { CLI, ChildRun, tempDir, writeMemoryFiles } from '../handler/helpers.js';

async function spawnPagesServe(t: TestContext, snapshotPath: string, port = 0): Promise<{ run: ChildRun; port: number }> {
  const child = spawn(process.execPath, [CLI, 'pages', 'serve', '--snapshot', snapshotPath, '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  const run = new ChildRun(t, child, 'userfault pages serve', 30_000);
  const match = await run.waitForText(/^listening on [^\n]*:(\d+)$/m);
  return { run, port: Number(match[1]) };
}

async function spawnServeFrom(t: TestContext, socketPath: string, url: string, json: boolean): Promise<{ run: ChildRun; metricsUrl: string }> {
  const args = ['serve', '--socket', socketPath, '--from', url, '--metrics', '127.0.0.1:0', ...(json ? ['--json'] : [])];
  const run = new ChildRun(t, spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }), 'userfault serve', 30_000);
  const metrics = await run.waitForText(json ? /"event":"metrics-listening","url":"(http:[^"]+)"/ : /^metrics on (http:\S+)$/m);
  await run.waitForText(json ? /"event":"listening"/ : /^serving .* on .*, pid \d+$/m);
  return { run, metricsUrl: metrics[1]! };
}

/** The value of an unlabelled series in a scrape. */
async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(url, { signal: AbortSignal.timeout(5_000) })).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${name} in the scrape`);
  return Number(line.split(' ')[1]);
}

const waitFor = async (what: string, ms: number, check: () => Promise<boolean>): Promise<void> => {
  const started = performance.now();
  while (!(await check())) {
    if (performance.now() - started > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
};

describe('userfault serve --from tcp:// when the page server goes away', { timeout: 60_000 }, () => {
  test('text: "unreachable … retrying until the deadline" within a second of the kill, "reconnected after" once it is back; the metrics follow', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    const first = await spawnPagesServe(t, files.snapshotPath);
    const url = `tcp://127.0.0.1:${first.port}`;
    const serve = await spawnServeFrom(t, join(dir, 'serve.sock'), url, false);
    assert.equal(await metric(serve.metricsUrl, 'userfault_source_unavailable'), 0);
    assert.equal(await metric(serve.metricsUrl, 'userfault_source_outages_total'), 0);

    first.run.kill('SIGKILL');
    await first.run.exit;
    const killedAt = performance.now();
    const down = await serve.run.waitForText(new RegExp(`^page server tcp://127\\.0\\.0\\.1:${first.port} unreachable, no reads waiting yet, retrying until the deadline in (29|30)\\.\\d s \\(last: .*\\)$`, 'm'));
    assert.ok(performance.now() - killedAt < 1_500, `said ${Math.round(performance.now() - killedAt)} ms after the kill`);
    assert.ok(down);
    await waitFor('the gauge', 2_000, async () => (await metric(serve.metricsUrl, 'userfault_source_unavailable')) === 1);
    assert.equal(await metric(serve.metricsUrl, 'userfault_source_outages_total'), 1);

    await new Promise((resolve) => setTimeout(resolve, 300));
    await spawnPagesServe(t, files.snapshotPath, first.port);
    const up = await serve.run.waitForText(new RegExp(`^page server tcp://127\\.0\\.0\\.1:${first.port} reconnected after (\\d+\\.\\d) s \\(no reads waited\\)$`, 'm'));
    assert.ok(Number(up[1]) >= 0.3, `back after ${up[1]} s`);
    assert.equal(await metric(serve.metricsUrl, 'userfault_source_unavailable'), 0);
    assert.equal(await metric(serve.metricsUrl, 'userfault_source_outages_total'), 1);
    assert.ok(await metric(serve.metricsUrl, 'userfault_source_outage_seconds_total') >= 0.3);
    serve.run.kill('SIGTERM');
    assert.deepEqual(await serve.run.exit, { code: 0, signal: null });
    assert.equal(serve.run.stderr, '', 'an outage is not an error');
  });

  test('JSON: source-unavailable (warn) and source-restored (info) lines with their fields', async (t) => {
    const dir = tempDir(t);
    const files = await writeMemoryFiles(dir);
    const first = await spawnPagesServe(t, files.snapshotPath);
    const serve = await spawnServeFrom(t, join(dir, 'serve.sock'), `tcp://127.0.0.1:${first.port}`, true);
    first.run.kill('SIGKILL');
    await first.run.exit;
    const downLine = await serve.run.waitForText(/^(\{.*"event":"source-unavailable".*\})$/m);
    await spawnPagesServe(t, files.snapshotPath, first.port);
    const upLine = await serve.run.waitForText(/^(\{.*"event":"source-restored".*\})$/m);
    const down = JSON.parse(downLine[1]!) as Record<string, unknown>;
    assert.equal(down.level, 40);
    assert.equal(down.source, `page server tcp://127.0.0.1:${first.port}`);
    assert.equal(down.readsWaiting, 0);
    assert.equal(down.retrying, true);
    assert.equal(typeof down.deadlineInMs, 'number');
    assert.equal(typeof down.since, 'number');
    assert.match(String(down.msg), /unreachable, no reads waiting yet, retrying until the deadline/);
    const up = JSON.parse(upLine[1]!) as Record<string, unknown>;
    assert.equal(up.level, 30);
    assert.equal(up.readsWaited, 0);
    assert.ok((up.afterMs as number) > 0);
    assert.match(String(up.msg), /reconnected after \d+\.\d s/);
  });
});
