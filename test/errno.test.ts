import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ERRNO, ErrnoTable, errnoName } from '../src/errno.js';

class CallFailed extends Error {
  constructor(readonly call: string, readonly errno: number, options?: { cause?: unknown }) {
    super(`${call}: ${errnoName(errno)}`, options);
  }
}
class Busy extends CallFailed {}

describe('errno tables', () => {
  const table = new ErrnoTable<CallFailed>([[ERRNO.EBUSY, Busy]], CallFailed);

  test('an errno is named as the kernel names it, or by number when the host does not know it', () => {
    assert.equal(errnoName(ERRNO.EINVAL), 'EINVAL');
    assert.equal(errnoName(99999), 'errno 99999');
  });

  test('an errno the table lists becomes its class; any other, the fallback', () => {
    const busy = table.errorFor('KVM_RUN', ERRNO.EBUSY);
    assert.ok(busy instanceof Busy);
    assert.equal(busy.message, 'KVM_RUN: EBUSY');
    const other = table.errorFor('KVM_RUN', ERRNO.EIO);
    assert.equal(other.constructor, CallFailed);
  });

  test("a native call's thrown {errno, syscall} becomes the typed error with it as the cause; any other exception passes through", () => {
    const thrown = Object.assign(new Error('native'), { code: 'ESYSCALL', errno: ERRNO.EBUSY, syscall: 'ioctl' });
    assert.throws(() => table.wrap(() => { throw thrown; }), (error: unknown) => error instanceof Busy && error.call === 'ioctl' && error.cause === thrown);
    assert.throws(() => table.wrap(() => { throw thrown; }, 'KVM_CREATE_VCPU'), (error: unknown) => error instanceof Busy && error.call === 'KVM_CREATE_VCPU');
    const plain = new TypeError('not a syscall');
    assert.throws(() => table.wrap(() => { throw plain; }), (error: unknown) => error === plain);
    assert.equal(table.wrap(() => 7), 7);
  });

  test('an errno listed twice is refused', () => {
    assert.throws(() => new ErrnoTable<CallFailed>([[ERRNO.EBUSY, Busy], [ERRNO.EBUSY, CallFailed]], CallFailed), /EBUSY is listed twice/);
  });
});
