import { describe, expect, it } from 'vitest';
import { applyRetention, dayKeyIn, isoWeek } from '../../../src/schedule/retention.js';

const snap = (id: string, createdAt: string) => ({ id, createdAt });
const policy = (p: Partial<{ keepLast: number; daily: number; weekly: number; monthly: number }>) => ({ keepLast: 1, daily: 0, weekly: 0, monthly: 0, ...p });

describe('applyRetention', () => {
  const nightly = Array.from({ length: 10 }, (_, i) => snap(`n${i + 1}`, `2026-11-${String(i + 1).padStart(2, '0')}T01:00:00.000Z`));

  it('keeps the newest N and removes the rest, oldest included', () => {
    const decision = applyRetention(nightly, policy({ keepLast: 3 }), 'UTC');
    expect(decision.keep.map((k) => k.id)).toEqual(['n10', 'n9', 'n8']);
    expect(decision.remove.sort()).toEqual(['n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'n7'].sort());
  });

  it('always keeps the newest snapshot, even with keepLast 0', () => {
    expect(applyRetention(nightly, policy({ keepLast: 0 }), 'UTC').keep.map((k) => k.id)).toEqual(['n10']);
  });

  it('keeps the newest snapshot of each of the last N days, not two of one day', () => {
    const twiceADay = [
      snap('d1-a', '2026-11-01T06:00:00Z'), snap('d1-b', '2026-11-01T18:00:00Z'),
      snap('d2-a', '2026-11-02T06:00:00Z'), snap('d2-b', '2026-11-02T18:00:00Z'),
      snap('d3-a', '2026-11-03T06:00:00Z'), snap('d3-b', '2026-11-03T18:00:00Z'),
    ];
    const decision = applyRetention(twiceADay, policy({ keepLast: 1, daily: 2 }), 'UTC');
    expect(decision.keep).toEqual([{ id: 'd3-b', reasons: ['last', 'daily 2026-11-03'] }, { id: 'd2-b', reasons: ['daily 2026-11-02'] }]);
    expect(decision.remove.sort()).toEqual(['d1-a', 'd1-b', 'd2-a', 'd3-a']);
  });

  it('counts days in the schedule\'s time zone', () => {
    // 23:30 UTC on the 1st is already the 2nd in Berlin: the two are on one Berlin day.
    const list = [snap('late', '2026-11-01T23:30:00Z'), snap('early', '2026-11-02T05:00:00Z')];
    expect(applyRetention(list, policy({ keepLast: 1, daily: 2 }), 'UTC').remove).toEqual([]);
    expect(applyRetention(list, policy({ keepLast: 1, daily: 2 }), 'Europe/Berlin').remove).toEqual(['late']);
  });

  it('combines daily, weekly and monthly buckets', () => {
    const year = Array.from({ length: 120 }, (_, i) => {
      const at = new Date(Date.UTC(2026, 0, 1) + i * 86_400_000);
      return snap(`s${at.toISOString().slice(0, 10)}`, at.toISOString());
    });
    const decision = applyRetention(year, policy({ keepLast: 2, daily: 7, weekly: 4, monthly: 3 }), 'UTC');
    const kept = decision.keep.map((k) => k.id);
    expect(kept.slice(0, 7)).toEqual(['s2026-04-30', 's2026-04-29', 's2026-04-28', 's2026-04-27', 's2026-04-26', 's2026-04-25', 's2026-04-24']);
    // Weekly: the newest of ISO weeks 18 (Apr 27-), 17, 16, 15 -> Apr 30, Apr 26, Apr 19, Apr 12.
    expect(kept).toEqual(expect.arrayContaining(['s2026-04-19', 's2026-04-12']));
    // Monthly: April, March, February -> Apr 30, Mar 31, Feb 28.
    expect(kept).toEqual(expect.arrayContaining(['s2026-03-31', 's2026-02-28']));
    expect(kept).not.toContain('s2026-01-31');
    expect(decision.keep.length + decision.remove.length).toBe(120);
  });
});

describe('applyRetention with crash-consistent snapshots', () => {
  const crash = (id: string, createdAt: string) => ({ id, createdAt, consistency: 'crash-consistent' as const });
  const clean = (id: string, createdAt: string) => ({ id, createdAt, consistency: 'clean' as const });

  it('never deletes a clean snapshot to keep crash-consistent ones (they do not count toward keepLast)', () => {
    const list = [clean('c1', '2026-11-01T01:00:00Z'), clean('c2', '2026-11-02T01:00:00Z'), crash('x3', '2026-11-03T01:00:00Z'), crash('x4', '2026-11-04T01:00:00Z')];
    const decision = applyRetention(list, policy({ keepLast: 2 }), 'UTC');
    // Both clean ones stay; the crash-consistent ones are newer than any clean one: kept too, up to keepLast.
    expect(decision.keep.map((k) => k.id)).toEqual(['x4', 'x3', 'c2', 'c1']);
    expect(decision.keep.find((k) => k.id === 'x4')!.reasons).toEqual(['crash-consistent, newer than any clean']);
    expect(decision.keep.find((k) => k.id === 'c2')!.reasons).toEqual(['last']);
    expect(decision.remove).toEqual([]);
  });

  it('removes crash-consistent snapshots older than the newest clean one, and keeps at most keepLast newer ones', () => {
    const list = [crash('x1', '2026-11-01T01:00:00Z'), clean('c2', '2026-11-02T01:00:00Z'), crash('x3', '2026-11-03T01:00:00Z'), crash('x4', '2026-11-04T01:00:00Z'), crash('x5', '2026-11-05T01:00:00Z')];
    const decision = applyRetention(list, policy({ keepLast: 2 }), 'UTC');
    expect(decision.keep.map((k) => k.id)).toEqual(['x5', 'x4', 'c2']);
    expect(decision.remove.sort()).toEqual(['x1', 'x3']);
  });

  it('does not count crash-consistent snapshots toward daily / weekly / monthly either', () => {
    // One clean snapshot a day, and a later crash-consistent one on the same days.
    const list = [1, 2, 3].flatMap((d) => [clean(`c${d}`, `2026-11-0${d}T01:00:00Z`), crash(`x${d}`, `2026-11-0${d}T13:00:00Z`)]);
    const decision = applyRetention(list, policy({ keepLast: 1, daily: 3 }), 'UTC');
    expect(decision.keep.map((k) => k.id)).toEqual(['x3', 'c3', 'c2', 'c1']);
    expect(decision.keep.find((k) => k.id === 'c3')!.reasons).toEqual(['last', 'daily 2026-11-03']);
    expect(decision.remove.sort()).toEqual(['x1', 'x2']);
  });

  it('with only crash-consistent snapshots keeps the newest keepLast of them', () => {
    const list = [crash('x1', '2026-11-01T01:00:00Z'), crash('x2', '2026-11-02T01:00:00Z'), crash('x3', '2026-11-03T01:00:00Z')];
    const decision = applyRetention(list, policy({ keepLast: 1, daily: 7 }), 'UTC');
    expect(decision.keep.map((k) => k.id)).toEqual(['x3']);
    expect(decision.remove.sort()).toEqual(['x1', 'x2']);
  });
});

describe('calendar keys', () => {
  it('gives the local day and the ISO week', () => {
    expect(dayKeyIn('America/New_York')('2026-11-21T03:00:00Z')).toBe('2026-11-20');
    expect(isoWeek('2026-01-01')).toBe('2026-W01');
    expect(isoWeek('2027-01-01')).toBe('2026-W53');
    expect(isoWeek('2026-12-28')).toBe('2026-W53');
    expect(isoWeek('2026-11-21')).toBe('2026-W47');
  });
});
