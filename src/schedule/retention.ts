import type { RetentionPolicy } from './schedule-spec.js';

/**
 * Which snapshots a retention policy keeps (the restic/borg rule): newest first, a snapshot is kept
 * by `keepLast` while that count lasts, and by `daily` / `weekly` / `monthly` if it is the newest of
 * a day (ISO week, month) not yet kept, while that bucket's count lasts. Days, weeks and months are
 * calendar ones in the schedule's time zone. Pure: the caller deletes.
 *
 * Only clean snapshots count toward these buckets: a crash-consistent snapshot never takes a
 * clean one's place. A crash-consistent snapshot is kept only while it is newer than every clean
 * one (the VM's latest state, when its last runs were not clean), at most `keepLast` of them
 * (reason "crash-consistent, newer than any clean"); every other crash-consistent one is removed.
 */
export interface Dated {
  readonly id: string;
  readonly createdAt: string;
  /** Missing counts as clean (older callers). */
  readonly consistency?: 'clean' | 'crash-consistent' | undefined;
}

export interface RetentionDecision {
  readonly keep: { id: string; reasons: string[] }[];
  readonly remove: string[];
}

export function applyRetention(snapshots: readonly Dated[], policy: RetentionPolicy, timeZone: string): RetentionDecision {
  const newestFirst = [...snapshots].sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id));
  const day = dayKeyIn(timeZone);
  const buckets = [
    { name: 'last', left: Math.max(1, policy.keepLast), key: (s: Dated) => s.id, last: undefined as string | undefined },
    { name: 'daily', left: policy.daily, key: (s: Dated) => day(s.createdAt), last: undefined as string | undefined },
    { name: 'weekly', left: policy.weekly, key: (s: Dated) => isoWeek(day(s.createdAt)), last: undefined as string | undefined },
    { name: 'monthly', left: policy.monthly, key: (s: Dated) => day(s.createdAt).slice(0, 7), last: undefined as string | undefined },
  ];
  const keep: RetentionDecision['keep'] = [];
  const remove: string[] = [];
  let cleanSeen = false;
  let crashLeft = Math.max(1, policy.keepLast);
  for (const snapshot of newestFirst) {
    if (snapshot.consistency === 'crash-consistent') {
      if (!cleanSeen && crashLeft > 0) {
        crashLeft--;
        keep.push({ id: snapshot.id, reasons: ['crash-consistent, newer than any clean'] });
      } else remove.push(snapshot.id);
      continue;
    }
    cleanSeen = true;
    const reasons: string[] = [];
    for (const bucket of buckets) {
      if (bucket.left <= 0) continue;
      const key = bucket.key(snapshot);
      if (key === bucket.last) continue;
      bucket.last = key;
      bucket.left--;
      reasons.push(bucket.name === 'last' ? 'last' : `${bucket.name} ${key}`);
    }
    if (reasons.length) keep.push({ id: snapshot.id, reasons });
    else remove.push(snapshot.id);
  }
  return { keep, remove };
}

/** "YYYY-MM-DD" of an instant in a time zone. */
export function dayKeyIn(timeZone: string): (iso: string) => string {
  const format = new Intl.DateTimeFormat('en-CA', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit' });
  return (iso) => {
    const parts = Object.fromEntries(format.formatToParts(new Date(iso)).map((part) => [part.type, part.value]));
    return `${parts.year}-${parts.month}-${parts.day}`;
  };
}

/** ISO 8601 week ("2026-W47") of a calendar day "YYYY-MM-DD". */
export function isoWeek(day: string): string {
  const [year, month, date] = day.split('-').map(Number) as [number, number, number];
  const utc = new Date(Date.UTC(year, month - 1, date));
  const weekday = utc.getUTCDay() || 7;
  utc.setUTCDate(utc.getUTCDate() + 4 - weekday); // the Thursday of this week decides its year
  const firstOfYear = Date.UTC(utc.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((utc.getTime() - firstOfYear) / 86_400_000 + 1) / 7);
  return `${utc.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}
