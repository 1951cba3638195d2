import { constants } from 'node:fs';
import { copyFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { isAlive } from '../qemu/process-info.js';
import { loadVm } from '../vm/registry.js';
import { startVm } from '../vm/start-vm.js';
import { stopVm } from '../vm/stop-vm.js';
import { convertImage } from './qemu-img.js';
import { loadSnapshot } from './store.js';

/**
 * Replace a stopped VM's disks with a snapshot's images (each copied next to its target, reflinked
 * where the filesystem allows, then renamed over it: a disk is never half-written). With
 * `restart`, a running VM started by forksnap is stopped first and started again afterwards.
 */
export async function revertToSnapshot(paths: Paths, id: string, options: { vm?: string | undefined; restart?: boolean; log: Logger }): Promise<{ vm: string; disks: string[]; restarted: boolean }> {
  const meta = await loadSnapshot(paths, id);
  const vmName = options.vm ?? meta.vm;
  const record = await loadVm(paths, vmName);
  const running = record.pid !== undefined && (await isAlive(record.pid));
  if (running && !options.restart) {
    throw new ForksnapError('VM_RUNNING', `VM "${vmName}" is running; stop it first (\`forksnap vm stop ${vmName}\`) or pass --restart`, { vm: vmName });
  }
  if (options.restart && record.origin !== 'started') {
    throw new ForksnapError('INVALID_INPUT', `--restart needs a VM started by forksnap; "${vmName}" was attached: stop it yourself, revert, start it again`, { vm: vmName });
  }
  const targets = meta.disks.map((disk) => {
    const target = record.disks.find((entry) => entry.id === disk.id)?.path ?? disk.source;
    const format = record.disks.find((entry) => entry.id === disk.id)?.format ?? disk.sourceFormat;
    return { disk, target, source: path.join(meta.dir, disk.image.file), format };
  });
  for (const { disk } of targets) {
    const current = record.disks.find((entry) => entry.id === disk.id);
    // An incremental image (qcow2 over other snapshots' images) is flattened into the disk's own format.
    if (current && current.format !== disk.image.format && !disk.image.backing) {
      throw new ForksnapError('INVALID_INPUT', `disk ${disk.id} of VM "${vmName}" is ${current.format} but the snapshot image is ${disk.image.format}`, { vm: vmName, disk: disk.id });
    }
  }
  if (running) await stopVm(paths, vmName, { log: options.log });
  for (const { disk, source, target, format } of targets) {
    const temp = path.join(path.dirname(target), `.forksnap-revert-${path.basename(target)}`);
    try {
      if (disk.image.backing) await convertImage({ file: source, format: disk.image.format }, { file: temp, format: format === 'raw' ? 'raw' : 'qcow2' });
      else await copyFile(source, temp, constants.COPYFILE_FICLONE);
      await rename(temp, target);
    } catch (error) {
      await rm(temp, { force: true });
      throw new ForksnapError('TOOL_FAILED', `writing ${target} from snapshot ${id} failed: ${(error as Error).message}`, { target, snapshot: id }, { cause: error });
    }
    options.log.info({ target, snapshot: id }, 'disk reverted');
  }
  let restarted = false;
  if (options.restart && record.spec) {
    await startVm(paths, record.spec, { log: options.log });
    restarted = true;
  }
  return { vm: vmName, disks: targets.map((entry) => entry.target), restarted };
}
