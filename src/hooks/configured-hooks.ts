import type { DaemonConfig } from '../server/daemon-config.js';
import { loadDaemonConfig } from '../server/load-config.js';
import type { HookSet } from './hook-spec.js';

/**
 * The hooks configured for a VM, the same for daemon jobs and in-process CLI jobs: global pre
 * hooks run before the VM's own, global post hooks after the VM's own.
 */
export function hooksFor(config: DaemonConfig, vm: string): HookSet {
  const own = config.vms[vm]?.hooks;
  return { pre: [...config.hooks.pre, ...(own?.pre ?? [])], post: [...(own?.post ?? []), ...config.hooks.post] };
}

/**
 * The hooks an in-process CLI job runs: those of the config file the daemon would read (`--config
 * FILE`, else $FORKSNAP_CONFIG, else /etc/forksnap/config.yaml if it exists; none without one).
 * An explicit file that is missing or invalid is an error (CONFIG_INVALID), never "no hooks".
 */
export async function loadConfiguredHooks(file: string | undefined, vm: string): Promise<{ hooks: HookSet; file: string | undefined }> {
  const { config, file: used } = await loadDaemonConfig(file);
  return { hooks: hooksFor(config, vm), file: used };
}
