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
    await expect(undo.unwind()).resolves.toEqual([]);
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
    await expect(undo.unwind()).resolves.toEqual(['async failure', 'sync failure']);
    expect(ran).toEqual(['last', 'first']);
    const errors = lines.filter((line) => line.msg === 'undo step failed');
    expect(errors.map((line) => [line.undo, line.err, line.level])).toEqual([
      ['async failure', 'merge failed', 50],
      ['sync failure', 'kill: no such process', 50],
    ]);
    expect(lines.filter((line) => line.msg === 'undo step done').map((line) => line.undo)).toEqual(['last', 'first']);
  });

  it('release drops the most recent action with that label only', async () => {
    const undo = new UndoStack(capturingLogger().log);
    const ran: string[] = [];
    undo.push('a', () => void ran.push('a1'));
    undo.push('b', () => void ran.push('b'));
    undo.push('a', () => void ran.push('a2'));
    undo.release('a');
    undo.release('not registered');
    expect(undo.size).toBe(2);
    await undo.unwind();
    expect(ran).toEqual(['b', 'a1']);
  });

  it('refuses new actions once unwound', async () => {
    const undo = new UndoStack(capturingLogger().log);
    await undo.unwind();
    expect(() => undo.push('late', () => {})).toThrow(/already unwound; cannot register "late"/);
  });
});
