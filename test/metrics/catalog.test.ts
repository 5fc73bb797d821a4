// Every metric follows Prometheus's naming, and docs/metrics.md lists each one as the catalog says.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { METRICS } from '../../src/metrics/catalog.js';
import { METRICS_DOC_PATH, renderMetricsDoc } from '../../src/metrics/metrics-doc.js';

describe('the metrics catalog', () => {
  test('names: userfault_ prefix, _total on counters and only there, base units, unique', () => {
    const names = Object.values(METRICS).map((m) => m.name);
    assert.equal(new Set(names).size, names.length);
    for (const m of Object.values(METRICS)) {
      assert.match(m.name, /^userfault_[a-z_]+$/, m.name);
      assert.equal(m.name.endsWith('_total'), m.type === 'counter', `${m.name}: _total exactly on counters`);
      if (m.type === 'histogram') assert.match(m.name, /_seconds$/, `${m.name}: a latency in seconds`);
      assert.doesNotMatch(m.name, /_(ms|micros|us|kib|mib|percent)(_|$)/, `${m.name}: base units`);
      for (const label of Object.keys(m.labels)) assert.notEqual(label, 'le', m.name);
    }
  });

  test('every label has a closed set of values, at most 24 (vcpu excepted: a number below 255)', () => {
    for (const m of Object.values(METRICS)) {
      for (const [label, values] of Object.entries(m.labels)) {
        if (label === 'vcpu') assert.equal(typeof values, 'string');
        else assert.ok(Array.isArray(values) && values.length > 0 && values.length <= 24, `${m.name}{${label}}`);
      }
    }
  });

  test('docs/metrics.md is generated from the catalog (node dist/src/metrics/metrics-doc.js --write)', () => {
    assert.equal(readFileSync(METRICS_DOC_PATH, 'utf8'), renderMetricsDoc());
    for (const m of Object.values(METRICS)) assert.match(renderMetricsDoc(), new RegExp(`\\| \`${m.name}\` \\| ${m.type} \\|`));
  });
});
