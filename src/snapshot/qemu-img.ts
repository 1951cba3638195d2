import { execa } from 'execa';
import { z } from 'zod';
import { ForksnapError } from '../errors.js';

/** qemu-img, the only tool that writes image files outside a QEMU process. */

export function qemuImgBinary(): string {
  return process.env.FORKSNAP_QEMU_IMG ?? 'qemu-img';
}

async function run(args: string[], signal?: AbortSignal): Promise<string> {
  const result = await execa(qemuImgBinary(), args, { reject: false, cancelSignal: signal, all: true });
  if (signal?.aborted) throw signal.reason;
  if (result.exitCode !== 0) {
    throw new ForksnapError('TOOL_FAILED', `qemu-img ${args[0]} failed (exit ${result.exitCode}): ${result.all?.trim().slice(-2000)}`, { command: result.command, exitCode: result.exitCode, outputTail: result.all?.slice(-2000) });
  }
  return result.stdout;
}

/** A qcow2 overlay whose backing file is `backing` (absolute path, format given: never probed). */
export async function createOverlay(file: string, backing: string, backingFormat: string, signal?: AbortSignal): Promise<void> {
  await run(['create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, file], signal);
}

const imageInfoSchema = z.object({
  filename: z.string(),
  format: z.string(),
  'virtual-size': z.number(),
  'actual-size': z.number().optional(),
  'backing-filename': z.string().optional(),
  'full-backing-filename': z.string().optional(),
  'format-specific': z.object({ data: z.record(z.string(), z.unknown()).optional() }).optional(),
});
export type QemuImgInfo = z.infer<typeof imageInfoSchema>;

export async function imageInfo(file: string, options: { forceShare?: boolean; signal?: AbortSignal } = {}): Promise<QemuImgInfo> {
  const stdout = await run(['info', '--output=json', ...(options.forceShare ? ['-U'] : []), file], options.signal);
  return imageInfoSchema.parse(JSON.parse(stdout));
}

/**
 * Flatten `source` (and its backing chain) into a self-contained image at `dest`, reporting
 * progress in percent. The source is never written.
 */
export async function convertImage(
  source: { file: string; format: string },
  dest: { file: string; format: 'raw' | 'qcow2' },
  options: { signal?: AbortSignal; onProgress?: (percent: number) => void } = {},
): Promise<void> {
  const args = ['convert', '-p', '-f', source.format, '-O', dest.format, ...(dest.format === 'raw' ? ['-S', '4k'] : []), source.file, dest.file];
  await qemuImgWithProgress(args, `qemu-img convert ${source.file} -> ${dest.file}`, options);
}

/** Run a qemu-img command that takes -p (convert, rebase, commit), reporting its progress; TOOL_FAILED with its output on failure. */
export async function qemuImgWithProgress(args: string[], what: string, options: { signal?: AbortSignal; onProgress?: (percent: number) => void; cwd?: string } = {}): Promise<void> {
  const subprocess = execa(qemuImgBinary(), args, { reject: false, cancelSignal: options.signal, all: true, cwd: options.cwd, buffer: { stdout: false, stderr: true, all: true } });
  subprocess.stdout?.setEncoding('utf8');
  subprocess.stdout?.on('data', (chunk: string) => {
    const matches = [...chunk.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
    const last = matches.at(-1);
    if (last) options.onProgress?.(Number(last[1]));
  });
  const result = await subprocess;
  if (options.signal?.aborted) throw options.signal.reason;
  if (result.exitCode !== 0) {
    throw new ForksnapError('TOOL_FAILED', `${what} failed (exit ${result.exitCode}): ${String(result.all ?? '').trim().slice(-2000)}`, { command: result.command, exitCode: result.exitCode });
  }
}
