import { pino, type Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import { UndoStack } from '../../../src/util/undo-stack.js';

function capturingLogger(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines };
}

describe('UndoStack', () => {
  it('runs actions in reverse order of registration, awaiting each', async () => {
    const { log } = capturingLogger();
    const undo = new UndoStack(log);
    const ran: string[] = [];
    undo.push('remove files', () => void ran.push('remove files'));
    undo.push('kill child', async () => {
      await new Promise((resolve) => setTimeout(resolve, 10));
      ran.push('kill child');
    });
    undo.push('resume parent', () => void ran.push('resume parent'));
    expect(undo.size).toBe(3);
    await expect(undo.unwind({ failed: true })).resolves.toEqual([]);
    expect(ran).toEqual(['resume parent', 'kill child', 'remove files']);
    expect(undo.size).toBe(0);
  });

  it('logs a failing action, goes on unwinding and returns the failed labels', async () => {
    const { log, lines } = capturingLogger();
    const undo = new UndoStack(log);
    const ran: string[] = [];
    undo.push('first', () => void ran.push('first'));
    undo.push('sync failure', () => {
      throw new Error('kill: no such process');
    });
    undo.push('async failure', async () => {
      throw new Error('merge failed');
    });
    undo.push('last', () => void ran.push('last'));
    await expect(undo.unwind({ failed: true })).resolves.toEqual(['async failure', 'sync failure']);
    expect(ran).toEqual(['last', 'first']);
    const errors = lines.filter((line) => line.msg === 'undo step failed');
    expect(errors.map((line) => [line.undo, line.err, line.level])).toEqual([
      ['async failure', 'merge failed', 50],
      ['sync failure', 'kill: no such process', 50],
    ]);
  });

  it('release() of a handle drops exactly that action, even among equal labels; twice is harmless', async () => {
    const undo = new UndoStack(capturingLogger().log);
    const ran: string[] = [];
    undo.push('a', () => void ran.push('a1'));
    undo.push('b', () => void ran.push('b'));
    const second = undo.push('a', () => void ran.push('a2'));
    const first = undo.push('a', () => void ran.push('a3'));
    second.release();
    second.release();
    expect(undo.size).toBe(3);
    first.release();
    await undo.unwind({ failed: true });
    expect(ran).toEqual(['b', 'a1']);
  });

  it("runs 'on-failure' actions only when the job failed, 'always' ones every time", async () => {
    for (const failed of [false, true]) {
      const undo = new UndoStack(capturingLogger().log);
      const ran: string[] = [];
      undo.push('close QMP', () => void ran.push('close QMP'));
      undo.push('remove partial snapshot', () => void ran.push('remove partial snapshot'), { when: 'on-failure' });
      undo.push('resume parent', () => void ran.push('resume parent'), { when: 'on-failure' });
      await expect(undo.unwind({ failed })).resolves.toEqual([]);
      expect(ran).toEqual(failed ? ['resume parent', 'remove partial snapshot', 'close QMP'] : ['close QMP']);
    }
  });

  it('gives each action its deadline: a hung action is abandoned, counted failed, and the rest still run', async () => {
    const { log, lines } = capturingLogger();
    const undo = new UndoStack(log);
    const ran: string[] = [];
    let sawAbort = false;
    undo.push('remove files', () => void ran.push('remove files'));
    undo.push('hangs and ignores its signal', () => new Promise(() => {}), { timeoutMs: 50 });
    undo.push('hangs but honours its signal', (signal) => new Promise((_, reject) => signal.addEventListener('abort', () => {
      sawAbort = true;
      reject(signal.reason);
    })), { timeoutMs: 50 });
    const started = Date.now();
    await expect(undo.unwind({ failed: true })).resolves.toEqual(['hangs but honours its signal', 'hangs and ignores its signal']);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(sawAbort).toBe(true);
    expect(ran).toEqual(['remove files']);
    expect(lines.filter((line) => line.msg === 'undo step failed').map((line) => line.undo)).toEqual(['hangs but honours its signal', 'hangs and ignores its signal']);
  });

  it('the unwind signal bounds the whole clean-up: once aborted, the remaining actions fail fast', async () => {
    const undo = new UndoStack(capturingLogger().log);
    const controller = new AbortController();
    const ran: string[] = [];
    undo.push('after the bound', () => void ran.push('after the bound'));
    undo.push('uses up the bound', async () => {
      ran.push('uses up the bound');
      controller.abort(new Error('clean-up deadline'));
      await new Promise(() => {});
    });
    await expect(undo.unwind({ failed: true, signal: controller.signal })).resolves.toEqual(['uses up the bound', 'after the bound']);
    expect(ran).toEqual(['uses up the bound']);
  });

  it('refuses new actions once unwound', async () => {
    const undo = new UndoStack(capturingLogger().log);
    await undo.unwind({ failed: false });
    expect(() => undo.push('late', () => {})).toThrow(/already unwound; cannot register "late"/);
  });
});
