import { pino } from 'pino';
import { QmpClient } from '../../src/qmp/client.js';
import { blockInfoList, statusInfo } from '../../src/qmp/schemas.js';

const quiet = pino({ level: 'silent' });

/** Open the VM's QMP socket for one question (QEMU allows one QMP client at a time). */
export async function withQmp<T>(socket: string, body: (qmp: QmpClient) => Promise<T>): Promise<T> {
  const qmp = await QmpClient.connect(socket, { log: quiet, timeoutMs: 10_000 });
  try {
    return await body(qmp);
  } finally {
    qmp.close();
  }
}

export const vmStatus = (socket: string) => withQmp(socket, (qmp) => qmp.execute('query-status', undefined, { schema: statusInfo }));
export const vmDiskFiles = (socket: string) => withQmp(socket, async (qmp) => (await qmp.execute('query-block', undefined, { schema: blockInfoList })).filter((b) => b.inserted && !b.inserted.ro).map((b) => b.inserted!.file));
