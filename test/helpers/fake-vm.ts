import { FakeQmpServer } from './fake-qmp-server.js';

/**
 * A FakeQmpServer scripted as a VM's run state and migration: query-status, stop, cont (with the
 * STOP and RESUME events QEMU sends), query-migrate, migrate_cancel. For unit tests of code that
 * pauses, resumes and cancels; tests change `state` to script what "someone else" did.
 */
export interface FakeVmState {
  status: string;
  migration: string;
}

export async function startFakeVm(initial: Partial<FakeVmState> = {}): Promise<{ server: FakeQmpServer; state: FakeVmState }> {
  const state: FakeVmState = { status: 'running', migration: 'none', ...initial };
  const server = await FakeQmpServer.start();
  server
    .handle('query-status', () => ({ return: { running: state.status === 'running', status: state.status } }))
    .handle('query-migrate', () => ({ return: state.migration === 'none' ? {} : { status: state.migration } }))
    .handle('stop', () => {
      if (state.status === 'running') {
        state.status = 'paused';
        server.emit('STOP');
      }
      return { return: {} };
    })
    .handle('cont', () => {
      if (state.status !== 'running') {
        state.status = 'running';
        server.emit('RESUME');
      }
      return { return: {} };
    })
    .handle('migrate_cancel', () => {
      state.migration = 'cancelled';
      return { return: {} };
    });
  return { server, state };
}
