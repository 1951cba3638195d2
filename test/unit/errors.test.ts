import { describe, expect, it } from 'vitest';
import { ERROR_CODES, EXIT_CODES, errorMessage, ForksnapError, isForksnapError, toForksnapError } from '../../src/errors.js';
import { QmpError } from '../../src/qmp/errors.js';

describe('ForksnapError', () => {
  it('takes its HTTP status and exit code from the registry', () => {
    expect(new ForksnapError('INVALID_NAME', 'x').httpStatus).toBe(400);
    expect(new ForksnapError('INVALID_NAME', 'x').exitCode).toBe(2);
    expect(new ForksnapError('VM_NOT_FOUND', 'x').exitCode).toBe(4);
    expect(new ForksnapError('VM_BUSY', 'x').httpStatus).toBe(409);
    expect(new ForksnapError('VM_BUSY', 'x').exitCode).toBe(3);
    expect(new ForksnapError('PHASE_TIMEOUT', 'x').httpStatus).toBe(504);
    expect(new ForksnapError('CANCELLED', 'x').exitCode).toBe(130);
    expect(new ForksnapError('NOT_CLEAN', 'x').exitCode).toBe(EXIT_CODES.NOT_CLEAN);
    expect(new ForksnapError('VERIFY_FAILED', 'x').exitCode).toBe(EXIT_CODES.VERIFY_FAILED);
    // 6 is a kept crash-consistent snapshot, a success: no error has it.
    expect(Object.values(ERROR_CODES).map((info) => info.exit)).not.toContain(EXIT_CODES.CRASH_CONSISTENT);
    for (const code of Object.keys(ERROR_CODES) as (keyof typeof ERROR_CODES)[]) {
      const error = new ForksnapError(code, 'x');
      expect([error.httpStatus, error.exitCode]).toEqual([ERROR_CODES[code].http, ERROR_CODES[code].exit]);
    }
  });

  it('uses only the documented exit codes and error HTTP statuses', () => {
    for (const info of Object.values(ERROR_CODES)) {
      expect([1, 2, 3, 4, 5, 7, 8, 130]).toContain(info.exit);
      expect(Object.values(EXIT_CODES)).toContain(info.exit);
      expect(info.http).toBeGreaterThanOrEqual(400);
      expect(info.http).toBeLessThan(600);
    }
  });

  it('serialises code, message, context and the cause message', () => {
    const cause = new Error('ENOSPC: no space left on device');
    const error = new ForksnapError('MATERIALISE_FAILED', 'writing d0 failed', { disk: 'd0' }, { cause });
    expect(error.toJSON()).toEqual({ code: 'MATERIALISE_FAILED', message: 'writing d0 failed', context: { disk: 'd0' }, cause: 'ENOSPC: no space left on device' });
    expect(JSON.parse(JSON.stringify(error))).toEqual(error.toJSON());
    expect(new ForksnapError('INTERNAL', 'bare').toJSON()).toEqual({ code: 'INTERNAL', message: 'bare', context: {} });
  });

  it('isForksnapError checks the class and optionally the code', () => {
    const error = new ForksnapError('VM_BUSY', 'busy');
    expect(isForksnapError(error)).toBe(true);
    expect(isForksnapError(error, 'VM_BUSY')).toBe(true);
    expect(isForksnapError(error, 'VM_NOT_FOUND')).toBe(false);
    expect(isForksnapError(new Error('plain'))).toBe(false);
    expect(isForksnapError(new QmpError('QMP_DISCONNECTED', 'gone', { execute: 'stop' }), 'QMP_DISCONNECTED')).toBe(true);
  });

  it('toForksnapError wraps unknown failures with the cause and keeps ForksnapErrors as they are', () => {
    const original = new ForksnapError('VM_BUSY', 'busy');
    expect(toForksnapError(original, 'INTERNAL', 'ignored')).toBe(original);
    const cause = new Error('EACCES');
    const wrapped = toForksnapError(cause, 'TOOL_FAILED', 'qemu-img failed', { tool: 'qemu-img' });
    expect(wrapped).toMatchObject({ code: 'TOOL_FAILED', message: 'qemu-img failed: EACCES', context: { tool: 'qemu-img' }, cause });
    expect(toForksnapError('a string', 'INTERNAL', 'boom').message).toBe('boom: a string');
    expect(errorMessage(cause)).toBe('EACCES');
    expect(errorMessage(42)).toBe('42');
  });

  it('QmpError keeps what was sent and what came back, also in the context', () => {
    const reply = { error: { class: 'DeviceNotFound', desc: 'no such device' }, id: 'fs-3' };
    const error = new QmpError('QMP_COMMAND_FAILED', 'refused', { execute: 'set_link', arguments: { name: 'n0', up: false } }, reply, 'DeviceNotFound');
    expect(error).toBeInstanceOf(ForksnapError);
    expect(error.name).toBe('QmpError');
    expect(error.toJSON()).toEqual({
      code: 'QMP_COMMAND_FAILED',
      message: 'refused',
      context: { qmpCommand: 'set_link', qmpArguments: { name: 'n0', up: false }, qmpReply: reply, errorClass: 'DeviceNotFound' },
    });
    expect(error.httpStatus).toBe(502);
  });
});
