import { describe, expect, it } from 'vitest';
import { downtimeParts } from '../../../src/forker/downtime-parts.js';

describe('downtimeParts', () => {
  it('splits a halt that forksnap resumes into forksnap\'s share and QEMU\'s', () => {
    const parts = downtimeParts(1000, 1012.5, { haltAnsweredAt: 1001, viewsAt: 1002, migrateAnsweredAt: 1003, pointSeenAt: 1010, contSentAt: 1010.5 });
    expect(parts).toEqual({ haltMs: 1, diskViewMs: 1, migrateCommandMs: 1, snapshotPointMs: 7, resumeCommandMs: 0.5, resumeMs: 2, forksnapMs: 1.5, qemuMs: 11 });
    expect(parts!.forksnapMs + parts!.qemuMs).toBe(12.5);
  });

  it('a QEMU that resumes by itself: no resume command, the resume counts from the migrate answer', () => {
    expect(downtimeParts(0, 9, { haltAnsweredAt: 0.5, viewsAt: 1.25, migrateAnsweredAt: 2 })).toEqual({ haltMs: 0.5, diskViewMs: 0.75, migrateCommandMs: 0.75, resumeMs: 7, forksnapMs: 0.75, qemuMs: 8.25 });
  });

  it('nothing to say when the marks are missing (the capture failed before migrate answered)', () => {
    expect(downtimeParts(0, 9, { haltAnsweredAt: 0.5, viewsAt: 1 })).toBeUndefined();
  });
});
