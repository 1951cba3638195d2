import { BENCH_METHODS, type BenchMethod, type BenchResults, type MethodSummary, type Stat } from './results.js';

/**
 * A hand-written SVG of the benchmark: four panels of grouped bars (one group per guest size, one
 * bar per method, a whisker from min to max): parent downtime and time until the child holds the
 * full state on log scales (they span milliseconds to seconds), and the guest's memory-dirtying
 * rate during the capture as a share of its rate before, raw and with host CPU wait taken out, on
 * linear scales.
 */
export const METHOD_COLORS: Record<BenchMethod, string> = {
  fork: '#1b9e77',
  'fork-postcopy': '#66a61e',
  'background-snapshot': '#7570b3',
  precopy: '#e6ab02',
  'stop-the-world': '#d95f02',
  'disk-only': '#999999',
};

interface Panel {
  readonly title: string;
  readonly scale: 'log' | 'linear';
  readonly unit: string;
  readonly pick: (summary: MethodSummary) => Stat | null;
  /** Multiplier for the displayed value (fractions shown as %). */
  readonly factor?: number;
  readonly guide?: number;
  readonly note?: string;
}

const PANELS: Panel[] = [
  { title: 'Parent downtime (ms, log scale)', scale: 'log', unit: 'ms', pick: (s) => s.downtimeMs },
  { title: 'Halt until the child holds the full state (ms, log scale)', scale: 'log', unit: 'ms', pick: (s) => s.timeToStateMs, note: 'precopy: from its halt, after the iterative pre-copy; stop-the-world: until the state file is written; disk-only has no RAM state' },
  { title: 'Guest dirtying rate during the capture (% of before)', scale: 'linear', unit: '%', pick: (s) => s.rateFraction, factor: 100, guide: 90, note: 'fork, background-snapshot: from the resume until the child holds the state; precopy: during its pre-copy; stop-the-world: paused (0); dashed line: 90 %' },
  { title: 'The same with the vCPU\'s wait for a host CPU taken out (% of the 2 s before)', scale: 'linear', unit: '%', pick: (s) => s.rateFractionNoWait, factor: 100, guide: 90, note: 'time the vCPU thread sat in a host run queue removed from both; faults and lock waits stay counted' },
  { title: 'Halt until the snapshot image is ready (ms, log scale)', scale: 'log', unit: 'ms', pick: (s) => s.timeToImageMs, note: 'fork-postcopy: its child runs its shutdown on the device state and faults its RAM in' },
  { title: 'The child QEMU\'s own peak Pss (MiB, log scale)', scale: 'log', unit: 'MiB', pick: (s) => mib(s.childPeakPssBytes), note: 'what the child holds: all of guest RAM, or with fork-postcopy what its shutdown touched' },
];

/** A byte Stat in MiB. */
function mib(value: Stat | null | undefined): Stat | null {
  return value ? { median: value.median / 1048576, min: value.min / 1048576, max: value.max / 1048576, n: value.n } : null;
}

const WIDTH = 960;
const PANEL_HEIGHT = 250;
const LEFT = 70;
const RIGHT = 20;
const TOP = 60;
const GAP = 50;

export function renderChart(results: BenchResults): string {
  const methods = BENCH_METHODS.filter((method) => results.sizes.some((size) => size.methods.some((s) => s.method === method && s.runs > 0)));
  const height = TOP + PANELS.length * (PANEL_HEIGHT + GAP) + 10;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>`,
    `<text x="${WIDTH / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(`forksnap benchmark: ${results.qemu.accel.toUpperCase()}, ${results.host.cpus} shared cores, medians with min-max`)}</text>`,
  ];
  methods.forEach((method, index) => {
    const x = LEFT + index * 170;
    parts.push(`<rect x="${x}" y="34" width="12" height="12" fill="${METHOD_COLORS[method]}"/>`, `<text x="${x + 17}" y="44">${method}</text>`);
  });
  PANELS.forEach((panel, index) => parts.push(renderPanel(results, methods, panel, TOP + index * (PANEL_HEIGHT + GAP))));
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

function renderPanel(results: BenchResults, methods: readonly BenchMethod[], panel: Panel, top: number): string {
  const factor = panel.factor ?? 1;
  const plotTop = top + 30;
  const plotHeight = PANEL_HEIGHT - 50;
  const plotWidth = WIDTH - LEFT - RIGHT;
  const values = results.sizes.flatMap((size) => size.methods.map(panel.pick).filter((s): s is Stat => s !== null).flatMap((s) => [s.min * factor, s.max * factor]));
  const axis = panel.scale === 'log' ? logAxis(values) : linearAxis(values);
  const y = (value: number) => plotTop + plotHeight - axis.position(value) * plotHeight;
  const out: string[] = [`<text x="${LEFT}" y="${top + 8}" font-weight="bold">${escapeXml(panel.title)}</text>`];
  if (panel.note) out.push(`<text x="${LEFT}" y="${top + 21}" fill="#666" font-size="10">${escapeXml(panel.note)}</text>`);
  for (const tick of axis.ticks) {
    out.push(`<line x1="${LEFT}" x2="${LEFT + plotWidth}" y1="${fmt(y(tick))}" y2="${fmt(y(tick))}" stroke="#e0e0e0"/>`);
    out.push(`<text x="${LEFT - 6}" y="${fmt(y(tick) + 4)}" text-anchor="end">${tickLabel(tick)}</text>`);
  }
  if (panel.guide !== undefined) out.push(`<line x1="${LEFT}" x2="${LEFT + plotWidth}" y1="${fmt(y(panel.guide))}" y2="${fmt(y(panel.guide))}" stroke="#c00" stroke-dasharray="4 3"/>`);
  const groupWidth = plotWidth / Math.max(1, results.sizes.length);
  const barWidth = Math.min(40, (groupWidth - 30) / Math.max(1, methods.length));
  results.sizes.forEach((size, groupIndex) => {
    const groupX = LEFT + groupIndex * groupWidth + (groupWidth - barWidth * methods.length) / 2;
    methods.forEach((method, index) => {
      const x = groupX + index * barWidth;
      const summary = size.methods.find((s) => s.method === method);
      const s = summary ? panel.pick(summary) : null;
      if (!s) {
        out.push(`<text x="${fmt(x + barWidth / 2)}" y="${fmt(plotTop + plotHeight - 4)}" text-anchor="middle" fill="#999">n/a</text>`);
        return;
      }
      const top = y(s.median * factor);
      const base = plotTop + plotHeight;
      out.push(`<rect x="${fmt(x + 2)}" y="${fmt(top)}" width="${fmt(barWidth - 4)}" height="${fmt(Math.max(1, base - top))}" fill="${METHOD_COLORS[method]}"><title>${escapeXml(`${method}, ${size.memoryMiB} MiB: median ${tickLabel(s.median * factor)} ${panel.unit} (min ${tickLabel(s.min * factor)}, max ${tickLabel(s.max * factor)}, n=${s.n})`)}</title></rect>`);
      const cx = fmt(x + barWidth / 2);
      out.push(`<line x1="${cx}" x2="${cx}" y1="${fmt(y(s.max * factor))}" y2="${fmt(y(s.min * factor))}" stroke="#333"/>`);
      out.push(`<text x="${cx}" y="${fmt(Math.min(top, y(s.max * factor)) - 3)}" text-anchor="middle" font-size="10">${tickLabel(s.median * factor)}</text>`);
    });
    out.push(`<text x="${fmt(LEFT + groupIndex * groupWidth + groupWidth / 2)}" y="${plotTop + plotHeight + 16}" text-anchor="middle">${size.memoryMiB >= 1024 ? `${size.memoryMiB / 1024} GiB` : `${size.memoryMiB} MiB`} guest</text>`);
  });
  out.push(`<line x1="${LEFT}" x2="${LEFT}" y1="${plotTop}" y2="${plotTop + plotHeight}" stroke="#333"/>`);
  out.push(`<line x1="${LEFT}" x2="${LEFT + plotWidth}" y1="${plotTop + plotHeight}" y2="${plotTop + plotHeight}" stroke="#333"/>`);
  return out.join('\n');
}

interface Axis {
  readonly ticks: number[];
  /** 0 at the bottom of the plot, 1 at the top. */
  position(value: number): number;
}

function logAxis(values: number[]): Axis {
  const positive = values.filter((value) => value > 0);
  const low = Math.floor(Math.log10(Math.min(...positive, 10)));
  const high = Math.max(low + 1, Math.ceil(Math.log10(Math.max(...positive, 10))));
  const ticks: number[] = [];
  for (let exponent = low; exponent <= high; exponent++) ticks.push(10 ** exponent);
  return { ticks, position: (value) => (Math.log10(Math.max(value, 10 ** low)) - low) / (high - low) };
}

function linearAxis(values: number[]): Axis {
  const step = Math.max(0, ...values) > 160 ? 50 : 20;
  const high = Math.max(100, Math.ceil(Math.max(0, ...values) / step) * step);
  const ticks: number[] = [];
  for (let tick = 0; tick <= high; tick += step) ticks.push(tick);
  return { ticks, position: (value) => Math.max(0, value) / high };
}

function tickLabel(value: number): string {
  if (value >= 10_000) return `${Math.round(value / 1000)}k`;
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(0);
  return value.toFixed(1).replace(/\.0$/, '');
}

function fmt(value: number): string {
  return value.toFixed(1).replace(/\.0$/, '');
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
