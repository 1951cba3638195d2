import path from 'node:path';
import { runBench } from '../bench/run-bench.js';
import { renderSizeTable, renderTargets, writeReport } from '../bench/report.js';
import { ForksnapError } from '../errors.js';
import type { CliContext } from './context.js';
import { printJson } from './output.js';

const USAGE = 'forksnap bench [--sizes 512,1024,2048] [--repeat 5 | --repeat 5,5,3] [--out docs/bench]  (FORKSNAP_BENCH_DIR: where the guests live, default /var/tmp; precopy needs a reflink filesystem there)';

/**
 * `forksnap bench`: see src/bench/run-bench.ts. Writes results.json, results.md and chart.svg to
 * --out (relative to the current directory) and prints the tables.
 */
export async function benchCommand(context: CliContext, rest: string[]): Promise<number> {
  const { values, json, log, signal } = context;
  if (rest.length > 0) throw new ForksnapError('INVALID_INPUT', `unexpected argument(s) ${rest.join(' ')}; usage: ${USAGE}`, { extra: rest });
  const sizesMiB = parseList(values.sizes, '512,1024,2048', '--sizes', 256);
  const repeat = parseList(values.repeat, '5', '--repeat', 1);
  if (repeat.length !== 1 && repeat.length !== sizesMiB.length) {
    throw new ForksnapError('INVALID_INPUT', `--repeat takes one number or one per size (${sizesMiB.length}); usage: ${USAGE}`, { repeat });
  }
  const outDir = path.resolve((values.out as string | undefined) ?? path.join('docs', 'bench'));
  const print = (line: string) => (json ? undefined : process.stdout.write(`${line}\n`));
  const workRoot = process.env.FORKSNAP_BENCH_DIR || undefined;
  const results = await runBench({ sizesMiB, repeat: repeat.length === 1 ? sizesMiB.map(() => repeat[0]!) : repeat, log, signal, print, ...(workRoot ? { workRoot } : {}) });
  const files = await writeReport(results, outDir);
  if (json) {
    printJson({ ...results, files });
    return 0;
  }
  print('');
  for (const size of results.sizes) print([...renderSizeTable(size), ''].join('\n'));
  print(renderTargets(results).join('\n'));
  print('');
  print(`wrote ${files.json}, ${files.markdown}, ${files.chart} (${Math.round(results.durationMs / 1000)} s in all)`);
  return 0;
}

function parseList(value: unknown, fallback: string, option: string, min: number): number[] {
  const text = (value as string | undefined) ?? fallback;
  const items = text.split(',').map((item) => item.trim());
  if (items.some((item) => !/^\d+$/.test(item) || Number(item) < min)) {
    throw new ForksnapError('INVALID_INPUT', `${option} must be comma-separated whole numbers >= ${min}, not "${text}"; usage: ${USAGE}`, { option, value: text });
  }
  return items.map(Number);
}
