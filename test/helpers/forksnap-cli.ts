import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(REPO, 'bin', 'forksnap.js');

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON lines where possible (events and the final result). */
  lines: Record<string, unknown>[];
}

/** Run the real CLI (built dist/) as a separate process, never in-process. */
export function startCli(args: string[], stateDir: string, env: Record<string, string> = {}): ResultPromise<{ reject: false; env: Record<string, string>; all: false }> {
  return execa('node', [CLI, ...args], { reject: false, env: { FORKSNAP_STATE_DIR: stateDir, FORKSNAP_LOG_LEVEL: 'warn', ...env }, all: false });
}

export async function runCli(args: string[], stateDir: string, env: Record<string, string> = {}): Promise<CliResult> {
  const result = await startCli(args, stateDir, env);
  return toCliResult(result);
}

export function toCliResult(result: { exitCode?: number | undefined; stdout: unknown; stderr: unknown }): CliResult {
  const stdout = String(result.stdout ?? '');
  const lines = stdout.split('\n').flatMap((line) => {
    try {
      const parsed: unknown = JSON.parse(line);
      return typeof parsed === 'object' && parsed !== null ? [parsed as Record<string, unknown>] : [];
    } catch {
      return [];
    }
  });
  return { exitCode: result.exitCode ?? -1, stdout, stderr: String(result.stderr ?? ''), lines };
}

export function resultOf(cli: CliResult): Record<string, any> {
  const result = cli.lines.find((line) => line.type === 'result');
  if (!result) throw new Error(`no result line; exit ${cli.exitCode}\nstdout: ${cli.stdout.slice(-3000)}\nstderr: ${cli.stderr.slice(-3000)}`);
  return result.snapshot as Record<string, any>;
}
