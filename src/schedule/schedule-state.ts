import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { Paths } from '../config.js';

/**
 * The last slot each schedule handled (ran, or skipped), persisted in
 * <state>/daemon/schedules.json so that slots missed while the daemon was down can be told apart
 * from slots that were handled.
 */
const stateSchema = z.record(z.string(), z.object({ lastSlot: z.string(), lastJob: z.string().optional(), outcome: z.enum(['submitted', 'skipped', 'failed']).optional() }));
export type ScheduleState = z.infer<typeof stateSchema>;

export const scheduleStateFile = (paths: Paths) => path.join(paths.stateDir, 'daemon', 'schedules.json');
export const scheduleKey = (vm: string, name: string) => `${vm}/${name}`;

export async function readScheduleState(paths: Paths): Promise<ScheduleState> {
  try {
    return stateSchema.parse(JSON.parse(await readFile(scheduleStateFile(paths), 'utf8')));
  } catch {
    return {};
  }
}

export async function writeScheduleState(paths: Paths, state: ScheduleState): Promise<void> {
  const file = scheduleStateFile(paths);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(`${file}.tmp`, `${JSON.stringify(state, null, 2)}\n`);
  await rename(`${file}.tmp`, file);
}
