/** Milliseconds rounded to 10 µs, as every duration forksnap reports. */
export function roundMs(ms: number): number {
  return Math.round(ms * 100) / 100;
}
