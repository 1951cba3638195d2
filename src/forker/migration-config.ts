import type { Logger } from 'pino';
import { ForksnapError, errorMessage } from '../errors.js';
import type { QmpClient } from '../qmp/client.js';
import { migrationCapabilityList, migrationInfo, migrationParameters } from '../qmp/schemas.js';
import { sleep } from '../util/abort.js';

/**
 * The parent's migration settings are the user's: forksnap sets what a capture needs and puts
 * every capability and parameter it finds changed back afterwards, whoever changed it during the
 * job (precopy raises `downtime-limit` to force a switchover). For the capture every capability
 * not asked for is switched off (a leftover xbzrle or multifd would make background-snapshot
 * refuse) and `events` is switched on.
 *
 * Ordering rules: `beforeChange` gets the originals before anything is changed (the job journals
 * them there, so recovery can put them back if forksnap dies); capabilities go off first, then on
 * (QEMU validates the whole resulting set at each call); a restore never stops at the first
 * refused command: it tries every one, logs each failure and then throws MIGRATION_RESTORE_FAILED
 * naming all of them.
 */
export const FAST_BANDWIDTH = 64 * 1024 * 1024 * 1024; // bytes/s: effectively unlimited, the same for every strategy

export interface MigrationSettings {
  readonly capabilities: Record<string, boolean>;
  readonly parameters?: Record<string, unknown>;
}

/** Everything query-migrate-capabilities and query-migrate-parameters report. */
export interface MigrationSettingsSnapshot {
  capabilities: Record<string, boolean>;
  parameters: Record<string, unknown>;
}

export interface MigrationSettingsOptions {
  /** Called with the originals before anything is changed; if it throws, nothing is changed. */
  readonly beforeChange?: (original: MigrationSettingsSnapshot) => Promise<void>;
  readonly log?: Logger;
}

export async function availableCapabilities(qmp: QmpClient, signal?: AbortSignal): Promise<Map<string, boolean>> {
  const caps = await qmp.execute('query-migrate-capabilities', undefined, { signal, schema: migrationCapabilityList });
  return new Map(caps.map((cap) => [cap.capability, cap.state]));
}

export async function readMigrationSettings(qmp: QmpClient, signal?: AbortSignal): Promise<MigrationSettingsSnapshot> {
  const capabilities = Object.fromEntries(await availableCapabilities(qmp, signal));
  const parameters = await qmp.execute('query-migrate-parameters', undefined, { signal, schema: migrationParameters });
  return { capabilities, parameters };
}

/** What differs between two snapshots: the capabilities and parameters to set to get back to `original`. */
export function settingsDiff(original: MigrationSettingsSnapshot, now: MigrationSettingsSnapshot): { capabilities: { capability: string; state: boolean }[]; parameters: Record<string, unknown> } {
  const capabilities = Object.entries(original.capabilities)
    .filter(([name, state]) => name in now.capabilities && now.capabilities[name] !== state)
    .map(([capability, state]) => ({ capability, state }));
  const parameters = Object.fromEntries(Object.entries(original.parameters).filter(([key, value]) => key in now.parameters && !sameValue(now.parameters[key], value)));
  return { capabilities, parameters };
}

/**
 * Set back every capability and parameter that now differs from `original`. Every refused command
 * is logged and tried past; then MIGRATION_RESTORE_FAILED names what could not be restored.
 * A parameter QEMU refuses in a batch is retried on its own, so one bad value does not keep the
 * others from being restored.
 */
export async function restoreMigrationSettings(qmp: QmpClient, original: MigrationSettingsSnapshot, signal?: AbortSignal, log?: Logger): Promise<void> {
  if (qmp.state !== 'ready') {
    throw new ForksnapError('MIGRATION_RESTORE_FAILED', 'cannot restore the parent\'s migration settings: its QMP connection is gone (the job journal keeps the originals for recovery)', { original });
  }
  const now = await readMigrationSettings(qmp, signal).catch((error: unknown) => {
    if (signal?.aborted) throw signal.reason;
    throw new ForksnapError('MIGRATION_RESTORE_FAILED', `cannot read the parent's migration settings to restore them: ${errorMessage(error)}`, { original }, { cause: error });
  });
  const diff = settingsDiff(original, now);
  // QEMU refuses capability changes while a migration runs (a cancelled one is "cancelling" for a moment).
  if (diff.capabilities.length) await waitUntilNoMigration(qmp, signal, log);
  const failures: { what: string; error: string }[] = [];
  const attempt = async (what: string, command: string, args: Record<string, unknown>): Promise<boolean> => {
    try {
      await qmp.execute(command, args, { signal });
      return true;
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      log?.error({ err: errorMessage(error), command, arguments: args }, `restoring the parent's migration ${what} failed`);
      failures.push({ what, error: errorMessage(error) });
      return false;
    }
  };
  const off = diff.capabilities.filter((cap) => !cap.state);
  const on = diff.capabilities.filter((cap) => cap.state);
  if (off.length) await attempt(`capabilities ${off.map((cap) => `${cap.capability}=off`).join(', ')}`, 'migrate-set-capabilities', { capabilities: off });
  if (on.length) await attempt(`capabilities ${on.map((cap) => `${cap.capability}=on`).join(', ')}`, 'migrate-set-capabilities', { capabilities: on });
  const keys = Object.keys(diff.parameters);
  if (keys.length) {
    let batchOk = false;
    try {
      await qmp.execute('migrate-set-parameters', diff.parameters, { signal });
      batchOk = true;
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      log?.warn({ err: errorMessage(error), parameters: diff.parameters }, 'restoring the migration parameters in one command failed; trying them one by one');
    }
    if (!batchOk) for (const key of keys) await attempt(`parameter ${key}=${JSON.stringify(diff.parameters[key])}`, 'migrate-set-parameters', { [key]: diff.parameters[key] });
  }
  if (failures.length) {
    throw new ForksnapError('MIGRATION_RESTORE_FAILED', `could not restore the parent's migration settings: ${failures.map((failure) => `${failure.what} (${failure.error})`).join('; ')}`, { failures, original });
  }
  if (diff.capabilities.length || keys.length) log?.debug({ capabilities: diff.capabilities, parameters: diff.parameters }, 'parent migration settings restored');
}

/**
 * Apply what a capture needs. `beforeChange` runs with the originals first; then capabilities and
 * parameters are set. Resolves with the restore (which throws MIGRATION_RESTORE_FAILED if any
 * setting could not be put back). If applying fails half-way, what was changed is restored before
 * the error is rethrown (a failed restore is logged then, the apply error wins).
 */
export async function applyMigrationSettings(
  qmp: QmpClient,
  settings: MigrationSettings,
  signal?: AbortSignal,
  options: MigrationSettingsOptions = {},
): Promise<(signal?: AbortSignal) => Promise<void>> {
  const original = await readMigrationSettings(qmp, signal);
  const desired = new Map<string, boolean>();
  for (const name of Object.keys(original.capabilities)) desired.set(name, false);
  if ('events' in original.capabilities) desired.set('events', true);
  for (const [name, state] of Object.entries(settings.capabilities)) desired.set(name, state);
  const changed = [...desired].filter(([name, state]) => original.capabilities[name] !== state);
  await options.beforeChange?.(original);

  const restore = (restoreSignal?: AbortSignal) => restoreMigrationSettings(qmp, original, restoreSignal, options.log);
  const off = changed.filter(([, state]) => !state).map(([capability, state]) => ({ capability, state }));
  const on = changed.filter(([, state]) => state).map(([capability, state]) => ({ capability, state }));
  try {
    if (off.length) await qmp.execute('migrate-set-capabilities', { capabilities: off }, { signal });
    if (on.length) await qmp.execute('migrate-set-capabilities', { capabilities: on }, { signal });
    if (settings.parameters && Object.keys(settings.parameters).length) await qmp.execute('migrate-set-parameters', settings.parameters, { signal });
  } catch (error) {
    await restore(AbortSignal.timeout(10_000)).catch((restoreError: unknown) => {
      options.log?.error({ err: errorMessage(restoreError) }, 'applying the capture\'s migration settings failed, and putting the originals back failed too');
    });
    throw error;
  }
  return restore;
}

const ACTIVE = new Set(['setup', 'active', 'cancelling', 'pre-switchover', 'device', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'wait-unplug', 'colo']);

async function waitUntilNoMigration(qmp: QmpClient, signal: AbortSignal | undefined, log: Logger | undefined, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute('query-migrate', undefined, { signal, schema: migrationInfo }).catch((error: unknown) => {
      log?.debug({ err: errorMessage(error) }, 'query-migrate failed before restoring the migration capabilities');
      return undefined;
    });
    if (!info?.status || !ACTIVE.has(info.status)) return;
    if (Date.now() > deadline) {
      log?.warn({ status: info.status }, 'a migration is still running: restoring the migration capabilities will likely be refused');
      return;
    }
    await sleep(50, signal);
  }
}

function sameValue(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
