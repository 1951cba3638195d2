import { z } from 'zod';

/**
 * A hook command from the config file. Run with execa and no shell unless asked: `command` is an
 * argv array (["/usr/local/bin/ship", "--fast"]); with `shell: true` (or a shell path) it may be
 * one string that the shell parses.
 */
export const hookSpecSchema = z.strictObject({
  command: z.union([z.array(z.string().min(1)).min(1), z.string().min(1)]),
  shell: z.union([z.boolean(), z.string().min(1)]).default(false),
  timeoutSeconds: z.number().positive().max(24 * 3600).default(600),
  /** Extra environment variables for this command (on top of the daemon's and FORKSNAP_*). */
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'environment variable names are letters, digits and "_"'), z.string()).default({}),
  /** Post hooks only: also run when the snapshot failed (FORKSNAP_STATUS=failed). */
  runOnFailure: z.boolean().default(false),
}).refine((hook) => Array.isArray(hook.command) || hook.shell !== false, {
  message: 'a command given as one string needs "shell: true"; without a shell give it as an argv array, e.g. ["/usr/bin/rsync", "-a", ...]',
  path: ['command'],
});
export type HookSpec = z.infer<typeof hookSpecSchema>;

export const hookSetSchema = z.strictObject({
  pre: z.array(hookSpecSchema).default([]),
  post: z.array(hookSpecSchema).default([]),
});
export type HookSet = z.infer<typeof hookSetSchema>;

export const NO_HOOKS: HookSet = { pre: [], post: [] };

export function describeHook(hook: HookSpec): string {
  return Array.isArray(hook.command) ? hook.command.join(' ') : hook.command;
}
