import { z } from 'zod';
import { hookSetSchema } from '../hooks/hook-spec.js';
import { scheduleSpecSchema } from '../schedule/schedule-spec.js';
import { NAME_PATTERN } from '../validate-name.js';

/**
 * The daemon's config file (YAML or JSON; JSON is read as YAML so errors carry line numbers too).
 * Every object is strict: a misspelt key is an error, not silently ignored. See docs/daemon.md.
 */
export const daemonConfigSchema = z.strictObject({
  server: z.strictObject({
    /** Unix socket (mode 0600); default <state>/forksnap.sock. */
    socket: z.string().min(1).optional(),
    /** Optional TCP listener; always requires the bearer token. */
    tcp: z.strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(0).max(65535),
      /** File holding the token (first line); or $FORKSNAP_TOKEN. */
      tokenFile: z.string().min(1).optional(),
    }).optional(),
    maxBodyBytes: z.number().int().min(1024).max(16 * 1024 * 1024).default(64 * 1024),
    /** A WebSocket client whose unsent data exceeds this is skipped (and told) until it catches up. */
    wsHighWaterBytes: z.number().int().min(1024).default(1024 * 1024),
  }).prefault({}),
  jobs: z.strictObject({
    maxConcurrent: z.number().int().min(1).max(64).default(2),
    /** On SIGTERM, running jobs get this long to finish before they are cancelled (and unwound). */
    shutdownGraceSeconds: z.number().min(0).max(3600).default(30),
    historyLimit: z.number().int().min(1).default(500),
  }).prefault({}),
  /** Hooks for every VM: pre hooks run before the VM's own, post hooks after them. */
  hooks: hookSetSchema.prefault({}),
  vms: z.record(
    z.string().regex(NAME_PATTERN, 'a VM name is 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit'),
    z.strictObject({
      hooks: hookSetSchema.prefault({}),
      schedules: z.array(scheduleSpecSchema).default([]),
    }),
  ).default({}),
}).superRefine((config, context) => {
  for (const [vm, entry] of Object.entries(config.vms)) {
    const seen = new Set<string>();
    entry.schedules.forEach((schedule, index) => {
      if (seen.has(schedule.name)) context.addIssue({ code: 'custom', path: ['vms', vm, 'schedules', index, 'name'], message: `schedule name "${schedule.name}" is used twice for VM ${vm}` });
      seen.add(schedule.name);
    });
  }
});

export type DaemonConfig = z.infer<typeof daemonConfigSchema>;

export const defaultDaemonConfig = (): DaemonConfig => daemonConfigSchema.parse({});
