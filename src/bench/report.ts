import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { renderChart } from './chart-svg.js';
import { percent, type BenchResults, type MethodSummary, type SizeResult, type Stat } from './results.js';

/**
 * The benchmark's report: results.json (everything measured), results.md (tables) and chart.svg,
 * written to one directory. Rendering is pure, so it is unit-tested from a fixed results object.
 */
export async function writeReport(results: BenchResults, outDir: string): Promise<{ json: string; markdown: string; chart: string }> {
  await mkdir(outDir, { recursive: true });
  const files = { json: path.join(outDir, 'results.json'), markdown: path.join(outDir, 'results.md'), chart: path.join(outDir, 'chart.svg') };
  await writeFile(files.json, `${JSON.stringify(results, null, 2)}\n`);
  await writeFile(files.markdown, renderMarkdown(results, 'chart.svg'));
  await writeFile(files.chart, renderChart(results));
  return files;
}

export function renderMarkdown(results: BenchResults, chartLink: string): string {
  const lines = [
    '# forksnap benchmark results',
    '',
    ...renderSetup(results),
    '',
    `![benchmark chart](${chartLink})`,
    '',
    ...results.sizes.flatMap((size) => [...renderSizeTable(size), '']),
    '## Targets (ratios of medians from this run)',
    '',
    ...renderTargets(results),
    '',
  ];
  return `${lines.join('\n')}`;
}

export function renderSetup(results: BenchResults): string[] {
  const repeats = results.sizes.map((size) => `${size.repeat} at ${sizeLabel(size.memoryMiB)}`).join(', ');
  return [
    `Run ${results.startedAt}, ${minutes(results.durationMs)} in all. Host: ${results.host.cpus} cores (${results.host.cpuModel}), shared with other work (load average ${results.host.loadAvgStart.map((n) => n.toFixed(1)).join(' / ')} at the start, ${results.host.loadAvgEnd.map((n) => n.toFixed(1)).join(' / ')} at the end), ${gib(results.host.memTotalBytes)} RAM, Linux ${results.host.kernel}.`,
    `QEMU ${results.qemu.version} (${results.qemu.patched ? 'forksnap-patched build with x-fork-snapshot' : 'stock'}: \`${results.qemu.binary}\`), accel=${results.qemu.accel}, 1 vCPU; every strategy and stop-the-world migrate with max-bandwidth ${gib(results.maxBandwidthBytes)}/s. Repetitions: ${repeats}; the methods interleaved, shuffled per repetition.`,
    "Guest: the test guest (busybox initramfs) holding a static non-zero ballast in tmpfs and rewriting a tmpfs file in a loop (`ballast M`, `dirty N`); it reports its own rate, and the MiB rewritten, every 250 ms of its own uptime. Its shutdown (the child's) first reads a quarter of the ballast (`shutdowntouch`): a known share of guest RAM the shutdown touches, which a fork-postcopy child has to fetch.",
    '',
    'Columns: median (min–max). *Downtime*: QMP STOP to RESUME. *State*: halt until the child (stop-the-world: the state file) holds the whole state. *Image*: halt until the snapshot image is written. *Guest rate*: the guest\'s dirtying rate while the capture runs (fork and background-snapshot: from the resume until the child holds the state; precopy: the iterative copy before its halt; stop-the-world: paused, 0 %), as a share of its usual rate: the median over the 2 s windows measured before every run of that guest size. *Same, CPU wait taken out*: the guest\'s rate over the time its vCPU thread was not waiting in a host run queue (on a CPU, or blocked in a copy-on-write or userfaultfd fault or on a lock), during the capture against the 2 s before it: the capture\'s own cost to the guest without the host\'s CPU contention. *vCPU on a CPU*: share of the capture\'s wall time the vCPU thread ran. *Host memory*: peak Pss summed over all QEMU processes of the run (parent, forked streamer, child); the VmRSS sum, which counts pages shared copy-on-write twice, in brackets. Second table: *first instruction*: halt until the child\'s `cont`; *child QEMU peak Pss*: the child alone (all of guest RAM it received, or with fork-postcopy what its shutdown touched); *page requests* and *never sent*: fork-postcopy\'s page faults served by the forked process, and the guest RAM it never had to send.',
  ];
}

export function renderSizeTable(size: SizeResult): string[] {
  const rate = size.rateBeforeMiBs ? `${size.rateBeforeMiBs.median.toFixed(0)} MiB/s (${size.rateBeforeMiBs.min.toFixed(0)}–${size.rateBeforeMiBs.max.toFixed(0)} before the runs)` : 'n/a';
  const rows = size.methods.map((summary) => {
    if (summary.unsupported) return `| ${summary.method} | not run: ${summary.unsupported} | | | | | | | |`;
    const failed = summary.failures.length ? ` (${summary.failures.length} failed)` : '';
    return `| ${summary.method}${failed} | ${ms(summary.downtimeMs)} | ${ms(summary.timeToStateMs)}${summary.precopyMs ? ` (+${ms(summary.precopyMs, true)} pre-copy)` : ''} | ${ms(summary.timeToImageMs)} | ${fraction(summary.rateFraction)} | ${fraction(summary.rateFractionNoWait)} | ${summary.vcpuShareDuring ? percent(summary.vcpuShareDuring.median) : 'n/a'} | ${memory(summary)} | ${summary.consistency} |`;
  });
  const guestBytes = size.memoryMiB * 1048576;
  const mib = (value: Stat | null | undefined) => (value ? `${(value.median / 1048576).toFixed(0)}${value.n > 1 ? ` (${(value.min / 1048576).toFixed(0)}–${(value.max / 1048576).toFixed(0)})` : ''}` : 'n/a');
  const child = size.methods.filter((summary) => !summary.unsupported && summary.runs > 0 && summary.method !== 'stop-the-world' && summary.method !== 'disk-only').map((summary) =>
    `| ${summary.method} | ${ms(summary.timeToChildRunMs ?? null)} | ${mib(summary.childPeakPssBytes)}${summary.childPeakPssBytes ? ` (${percent(summary.childPeakPssBytes.median / guestBytes)})` : ''} | ${summary.postcopyRequests ? summary.postcopyRequests.median.toFixed(0) : 'n/a'} | ${mib(summary.postcopyUnsentBytes)} | ${mib(summary.parentVmPteBytes)} |`);
  return [
    `## ${sizeLabel(size.memoryMiB)} guest (${size.ballastMiB} MiB ballast + ${size.dirtyMiB} MiB rewritten at ${rate}${size.shutdownTouchMiB ? `; its shutdown reads ${size.shutdownTouchMiB} MiB of the ballast` : ''}, ${size.repeat} repetitions, ${minutes(size.durationMs)})`,
    '',
    '| method | parent downtime (ms) | time to state (ms) | time to image (ms) | guest rate during capture | same, CPU wait taken out | vCPU on a CPU | peak host memory MiB | consistency |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
    ...rows,
    '',
    '| method | halt to the child\'s first instruction (ms) | child QEMU peak Pss MiB (of guest RAM) | page requests (fork-postcopy) | guest RAM never sent MiB | parent VmPTE before the halt MiB |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...child,
  ];
}

export function renderTargets(results: BenchResults): string[] {
  return [
    '| guest | target | measured | required | |',
    '| --- | --- | ---: | ---: | --- |',
    ...results.targets.map((check) => `| ${sizeLabel(check.memoryMiB)} | ${check.target} | ${check.measured} | ${check.required} | ${check.met === null ? '—' : check.met ? '✅' : '❌'} |`),
  ];
}

function ms(value: Stat | null, bare = false): string {
  if (!value) return 'n/a';
  const round = (n: number) => (n >= 100 ? n.toFixed(0) : n.toFixed(1));
  if (bare || value.n === 1) return round(value.median);
  return `${round(value.median)} (${round(value.min)}–${round(value.max)})`;
}

function fraction(value: Stat | null): string {
  if (!value) return 'n/a';
  if (value.max === 0) return '0 % (paused)';
  return value.n === 1 ? percent(value.median) : `${percent(value.median)} (${percent(value.min)}–${percent(value.max)})`;
}

function memory(summary: MethodSummary): string {
  const mib = (bytes: number) => (bytes / 1048576).toFixed(0);
  if (!summary.peakPssBytes) return 'n/a';
  return `${mib(summary.peakPssBytes.median)}${summary.peakRssBytes ? ` [${mib(summary.peakRssBytes.median)}]` : ''}`;
}

export function sizeLabel(mib: number): string {
  return mib >= 1024 && mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

function gib(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(bytes >= 10 * 1024 ** 3 ? 0 : 1)} GiB`;
}

function minutes(msValue: number): string {
  const seconds = Math.round(msValue / 1000);
  return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}
