import { ForksnapError } from '../errors.js';
import type { QmpClient } from '../qmp/client.js';
import { availableCapabilities } from './migration-config.js';
import { backgroundSnapshotStrategy, forkStrategy } from './halt-then-migrate.js';
import { precopyStrategy } from './precopy.js';
import { STRATEGY_NAMES, type CaptureStrategy, type StrategyName } from './strategy.js';

/**
 * Which strategies this QEMU (binary and host kernel) supports. A capability being listed is not
 * enough: background-snapshot needs userfaultfd write-protection from the kernel, which QEMU only
 * checks when the capability is switched on. So each candidate is switched on and off again.
 */
export async function supportedStrategies(qmp: QmpClient, signal?: AbortSignal): Promise<{ supported: StrategyName[]; reasons: Partial<Record<StrategyName, string>> }> {
  const caps = await availableCapabilities(qmp, signal);
  const supported: StrategyName[] = [];
  const reasons: Partial<Record<StrategyName, string>> = {};
  const probe = async (name: StrategyName, capability: string) => {
    if (!caps.has(capability)) {
      reasons[name] = `this QEMU has no "${capability}" migration capability${name === 'fork' ? ' (it is not built with forksnap\'s patch; see `forksnap qemu build`)' : ''}`;
      return;
    }
    if (caps.get(capability)) {
      supported.push(name);
      return;
    }
    // Switch off everything that conflicts first is not our business here: probe in isolation.
    try {
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability, state: true }] }, { signal });
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability, state: false }] }, { signal });
      supported.push(name);
    } catch (error) {
      reasons[name] = (error as Error).message;
    }
  };
  await probe('fork', 'x-fork-snapshot');
  await probe('background-snapshot', 'background-snapshot');
  if (caps.has('pause-before-switchover')) supported.push('precopy');
  else reasons.precopy = 'this QEMU has no pause-before-switchover capability';
  return { supported, reasons };
}

export function strategyByName(name: StrategyName): CaptureStrategy {
  switch (name) {
    case 'fork':
      return forkStrategy;
    case 'background-snapshot':
      return backgroundSnapshotStrategy;
    case 'precopy':
      return precopyStrategy();
  }
}

/** The requested strategy if supported, else the best supported one. */
export async function chooseStrategy(qmp: QmpClient, requested: StrategyName | 'auto', signal?: AbortSignal): Promise<{ strategy: CaptureStrategy; supported: StrategyName[] }> {
  const { supported, reasons } = await supportedStrategies(qmp, signal);
  if (requested !== 'auto') {
    if (!supported.includes(requested)) {
      throw new ForksnapError('STRATEGY_UNSUPPORTED', `strategy ${requested} is not available for this VM: ${reasons[requested] ?? 'unsupported'}; available: ${supported.join(', ') || 'none'}`, { requested, supported, reasons });
    }
    return { strategy: strategyByName(requested), supported };
  }
  const best = STRATEGY_NAMES.find((name) => supported.includes(name));
  if (!best) throw new ForksnapError('STRATEGY_UNSUPPORTED', `no capture strategy is available: ${JSON.stringify(reasons)}`, { reasons });
  return { strategy: strategyByName(best), supported };
}
