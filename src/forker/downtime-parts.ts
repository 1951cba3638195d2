import { roundMs } from '../util/round-ms.js';

/** The host's wall clock in ms with sub-ms resolution: comparable with QEMU's event timestamps (also realtime, same host). */
export function wallNowMs(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Where the parent's downtime went, for the strategies that halt first (fork, background-snapshot).
 * The ends are QEMU's own STOP and RESUME timestamps; the marks between them are taken on the host
 * clock by forksnap as each step returns:
 *
 *   STOP ─ halt ─ `stop` answered ─ diskView ─ views in place ─ migrateCommand ─ `migrate`
 *   answered ─ snapshotPoint ─ point seen ─ resumeCommand ─ `cont` sent ─ resume ─ RESUME
 *
 * QEMU sends STOP once the vCPUs are paused and only then drains and flushes the guest's I/O
 * (do_vm_stop): `halt` is QEMU's. forksnap's own share is what it does between QEMU's work: the
 * disk views' QMP commands at the halt (QEMU executes them in microseconds; the time is round
 * trips and forksnap's own code) and the ordering round trip before `cont` (background-snapshot
 * only). QEMU's share: the flush, the `migrate` command, saving the device state and forking (or
 * arming write-protection) until forksnap sees the snapshot point (this includes up to one poll
 * interval of forksnap's, 1 ms), and the resume. A QEMU that resumes by itself (7.2's
 * background-snapshot) has no resumeCommand, and its resume counts from the `migrate` answer.
 */
export interface DowntimeParts {
  readonly haltMs: number;
  readonly diskViewMs: number;
  readonly migrateCommandMs: number;
  readonly snapshotPointMs?: number;
  readonly resumeCommandMs?: number;
  readonly resumeMs: number;
  readonly forksnapMs: number;
  readonly qemuMs: number;
}

export interface DowntimeMarks {
  haltAnsweredAt?: number;
  viewsAt?: number;
  migrateAnsweredAt?: number;
  pointSeenAt?: number;
  contSentAt?: number;
}

export function downtimeParts(stopAt: number, resumeAt: number, marks: DowntimeMarks): DowntimeParts | undefined {
  const { haltAnsweredAt, viewsAt, migrateAnsweredAt, pointSeenAt, contSentAt } = marks;
  if (haltAnsweredAt === undefined || viewsAt === undefined || migrateAnsweredAt === undefined) return undefined;
  const haltMs = haltAnsweredAt - stopAt;
  const diskViewMs = viewsAt - haltAnsweredAt;
  const migrateCommandMs = migrateAnsweredAt - viewsAt;
  if (pointSeenAt !== undefined && contSentAt !== undefined) {
    const snapshotPointMs = pointSeenAt - migrateAnsweredAt;
    const resumeCommandMs = contSentAt - pointSeenAt;
    const resumeMs = resumeAt - contSentAt;
    const forksnapMs = diskViewMs + resumeCommandMs;
    return round({ haltMs, diskViewMs, migrateCommandMs, snapshotPointMs, resumeCommandMs, resumeMs, forksnapMs, qemuMs: resumeAt - stopAt - forksnapMs });
  }
  const resumeMs = resumeAt - migrateAnsweredAt;
  return round({ haltMs, diskViewMs, migrateCommandMs, resumeMs, forksnapMs: diskViewMs, qemuMs: resumeAt - stopAt - diskViewMs });
}

function round(parts: DowntimeParts): DowntimeParts {
  return Object.fromEntries(Object.entries(parts).map(([key, value]) => [key, roundMs(value as number)])) as unknown as DowntimeParts;
}
