// Reading /metrics back: the text format's samples, escapes and errors.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MetricsTextError, SampleSet, parsePrometheusText } from '../../src/dashboard/prometheus-text.js';

const TEXT = [
  '# HELP userfault_faults_total Page faults.',
  '# TYPE userfault_faults_total counter',
  'userfault_faults_total{kind="missing"} 12',
  'userfault_faults_total{kind="in-flight"} 3',
  'userfault_vm_memory_bytes 67108864',
  'weird{a="x\\"y",b="back\\\\slash",c="new\\nline"} 1.5e3 1700000000000',
  'h_bucket{le="+Inf"} +Inf',
  'nan Nan',
  '',
].join('\n');

describe('the Prometheus text format, read back', () => {
  test('samples with labels, escapes, timestamps and special values', () => {
    const samples = parsePrometheusText(TEXT);
    assert.equal(samples.length, 6);
    assert.deepEqual(samples[3], { name: 'weird', labels: { a: 'x"y', b: 'back\\slash', c: 'new\nline' }, value: 1500 });
    assert.equal(samples[4]!.value, Infinity);
    assert.ok(Number.isNaN(samples[5]!.value));
    const set = new SampleSet(samples);
    assert.equal(set.sum('userfault_faults_total'), 15);
    assert.equal(set.value('userfault_faults_total', { kind: 'in-flight' }), 3);
    assert.equal(set.value('userfault_vm_memory_bytes'), 67108864);
    assert.equal(set.sum('absent'), 0);
    assert.equal(set.value('absent'), undefined);
  });

  test('garbage is an error naming its line, not zeros', () => {
    assert.throws(() => parsePrometheusText('ok 1\n<html>'), (e: unknown) => e instanceof MetricsTextError && e.line === 2);
    assert.throws(() => parsePrometheusText('x{a="1"'), MetricsTextError);
    assert.throws(() => parsePrometheusText('x{a=1} 2'), MetricsTextError);
    assert.throws(() => parsePrometheusText('x one'), MetricsTextError);
    assert.throws(() => parsePrometheusText('x 1 2 3'), MetricsTextError);
  });

  test('cut at every offset, a scrape either parses or fails with MetricsTextError', () => {
    for (let end = 0; end <= TEXT.length; end++) {
      try {
        parsePrometheusText(TEXT.slice(0, end));
      } catch (error) {
        assert.ok(error instanceof MetricsTextError, `cut at ${end}: ${String(error)}`);
      }
    }
  });
});
