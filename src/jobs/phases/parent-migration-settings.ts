import type { Logger } from 'pino';
import { errorMessage } from '../../errors.js';
import { applyMigrationSettings, type MigrationSettingsSnapshot } from '../../forker/migration-config.js';
import type { QmpClient } from '../../qmp/client.js';

/**
 * The parent's migration settings for the capture: applied in prepare, switched once more if a
 * refused fork() falls back to background-snapshot, and put back right after the capture (the undo
 * does it too if the job fails first). The user's settings always come back; `restore` is
 * idempotent.
 */
export class ParentMigrationSettings {
  #restore: (() => Promise<void>) | undefined;

  constructor(
    private readonly parent: QmpClient,
    private readonly parameters: Record<string, unknown>,
    private readonly log: Logger,
    /** Journals the user's settings before anything is changed (crash recovery restores them). */
    private readonly beforeChange?: (original: MigrationSettingsSnapshot) => Promise<void>,
  ) {}

  /** Apply the capabilities a strategy needs (restoring the previous switch first). */
  async apply(capabilities: Record<string, boolean>, signal: AbortSignal): Promise<void> {
    await this.restore();
    this.#restore = await applyMigrationSettings(this.parent, { capabilities, parameters: this.parameters }, signal, { ...(this.beforeChange ? { beforeChange: this.beforeChange } : {}), log: this.log });
  }

  async restore(): Promise<void> {
    const restore = this.#restore;
    this.#restore = undefined;
    if (!restore) return;
    try {
      await restore();
    } catch (error) {
      // Kept, so the clean-up's undo tries again (and, failing there too, keeps the journal, whose
      // originals the supervisor or the next job restore).
      this.#restore = restore;
      this.log.error({ err: errorMessage(error) }, 'restoring the parent\'s migration settings failed');
      throw error;
    }
  }
}
