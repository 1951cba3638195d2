import type { QmpClient } from '../qmp/client.js';
import { migrationCapabilityList, migrationParameters } from '../qmp/schemas.js';

/**
 * The parent's migration settings are the user's: forksnap sets what a capture needs and puts the
 * originals back afterwards. Every capability not asked for is switched off for the capture (a
 * leftover xbzrle or multifd would make background-snapshot refuse), `events` is switched on.
 */
export const FAST_BANDWIDTH = 64 * 1024 * 1024 * 1024; // bytes/s: effectively unlimited, the same for every strategy

export interface MigrationSettings {
  readonly capabilities: Record<string, boolean>;
  readonly parameters?: Record<string, unknown>;
}

export async function availableCapabilities(qmp: QmpClient, signal?: AbortSignal): Promise<Map<string, boolean>> {
  const caps = await qmp.execute('query-migrate-capabilities', undefined, { signal, schema: migrationCapabilityList });
  return new Map(caps.map((cap) => [cap.capability, cap.state]));
}

/** Apply settings; resolves with a function that restores what was there before (never throws). */
export async function applyMigrationSettings(qmp: QmpClient, settings: MigrationSettings, signal?: AbortSignal): Promise<() => Promise<void>> {
  const original = await availableCapabilities(qmp, signal);
  const desired = new Map<string, boolean>();
  for (const name of original.keys()) desired.set(name, false);
  if (original.has('events')) desired.set('events', true);
  for (const [name, state] of Object.entries(settings.capabilities)) desired.set(name, state);
  const changed = [...desired].filter(([name, state]) => original.get(name) !== state);
  const originalParams = await qmp.execute('query-migrate-parameters', undefined, { signal, schema: migrationParameters });

  // Switch off first, then on: QEMU validates the whole resulting set at each call.
  const off = changed.filter(([, state]) => !state).map(([capability, state]) => ({ capability, state }));
  const on = changed.filter(([, state]) => state).map(([capability, state]) => ({ capability, state }));
  const restore = async () => {
    const back = changed.map(([capability]) => ({ capability, state: original.get(capability) ?? false }));
    const backOff = back.filter((cap) => !cap.state);
    const backOn = back.filter((cap) => cap.state);
    if (qmp.state !== 'ready') return;
    if (backOff.length) await qmp.execute('migrate-set-capabilities', { capabilities: backOff }).catch(() => {});
    if (backOn.length) await qmp.execute('migrate-set-capabilities', { capabilities: backOn }).catch(() => {});
    const params = Object.fromEntries(Object.keys(settings.parameters ?? {}).filter((key) => key in originalParams).map((key) => [key, originalParams[key]]));
    if (Object.keys(params).length) await qmp.execute('migrate-set-parameters', params).catch(() => {});
  };
  try {
    if (off.length) await qmp.execute('migrate-set-capabilities', { capabilities: off }, { signal });
    if (on.length) await qmp.execute('migrate-set-capabilities', { capabilities: on }, { signal });
    if (settings.parameters && Object.keys(settings.parameters).length) await qmp.execute('migrate-set-parameters', settings.parameters, { signal });
  } catch (error) {
    await restore();
    throw error;
  }
  return restore;
}
