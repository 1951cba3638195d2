import { describe, expect, it } from 'vitest';
import { shuffled } from '../../../src/bench/shuffled.js';
import { BENCH_METHODS } from '../../../src/bench/results.js';

describe('shuffled', () => {
  it('is a reproducible permutation', () => {
    const once = shuffled(BENCH_METHODS, 102_401);
    expect(shuffled(BENCH_METHODS, 102_401)).toEqual(once);
    expect([...once].sort()).toEqual([...BENCH_METHODS].sort());
  });

  it('does not keep one method behind the same predecessor in every repetition', () => {
    const predecessors = new Set<string>();
    for (let rep = 1; rep <= 5; rep++) {
      const order = shuffled(BENCH_METHODS, 102_400 + rep);
      const index = order.indexOf('background-snapshot');
      predecessors.add(index === 0 ? '(first)' : order[index - 1]!);
    }
    expect(predecessors.size).toBeGreaterThan(1);
  });
});
