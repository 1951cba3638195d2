import { z } from 'zod';

/** zod schemas for the QMP replies forksnap reads. Only the fields we use; the rest passes through. */

export const statusInfo = z.object({ running: z.boolean(), status: z.string() });
export type StatusInfo = z.infer<typeof statusInfo>;

const imageInfo: z.ZodType<ImageInfo> = z.lazy(() =>
  z.object({
    filename: z.string(),
    format: z.string(),
    'virtual-size': z.number(),
    'backing-image': imageInfo.optional(),
  }),
);
export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'backing-image'?: ImageInfo | undefined;
}

export const blockInfo = z.object({
  device: z.string(),
  qdev: z.string().optional(),
  removable: z.boolean(),
  locked: z.boolean().optional(),
  inserted: z
    .object({
      'node-name': z.string().optional(),
      file: z.string(),
      drv: z.string(),
      ro: z.boolean(),
      'backing_file': z.string().optional(),
      'backing_file_depth': z.number().optional(),
      image: imageInfo,
    })
    .optional(),
});
export const blockInfoList = z.array(blockInfo);
export type BlockInfo = z.infer<typeof blockInfo>;

export const namedBlockNode = z.object({
  'node-name': z.string(),
  drv: z.string(),
  file: z.string(),
  ro: z.boolean(),
  backing_file: z.string().optional(),
});
export const namedBlockNodeList = z.array(namedBlockNode);
export type NamedBlockNode = z.infer<typeof namedBlockNode>;

export const blockJobInfo = z.object({ device: z.string(), type: z.string(), len: z.number(), offset: z.number(), ready: z.boolean().optional(), status: z.string().optional() });
export const blockJobInfoList = z.array(blockJobInfo);

export const migrationRamStats = z.object({
  transferred: z.number(),
  remaining: z.number(),
  total: z.number(),
  normal: z.number().optional(),
  'normal-bytes': z.number().optional(),
  'dirty-pages-rate': z.number().optional(),
  mbps: z.number().optional(),
  'postcopy-requests': z.number().optional(),
  duplicate: z.number().optional(),
  'page-size': z.number().optional(),
});

export const migrationInfo = z.object({
  status: z.string().optional(),
  ram: migrationRamStats.optional(),
  'total-time': z.number().optional(),
  downtime: z.number().optional(),
  'setup-time': z.number().optional(),
  'error-desc': z.string().optional(),
});
export type MigrationInfo = z.infer<typeof migrationInfo>;

export const migrationCapabilityList = z.array(z.object({ capability: z.string(), state: z.boolean() }));
export type MigrationCapabilityList = z.infer<typeof migrationCapabilityList>;

export const migrationParameters = z.record(z.string(), z.unknown());

const pciDevice: z.ZodType<PciDevice> = z.lazy(() =>
  z.object({
    bus: z.number(),
    slot: z.number(),
    function: z.number(),
    class_info: z.object({ class: z.number(), desc: z.string().optional() }),
    id: z.object({ device: z.number(), vendor: z.number() }),
    qdev_id: z.string(),
    pci_bridge: z.object({ devices: z.array(pciDevice).optional() }).optional(),
  }),
);
export interface PciDevice {
  bus: number;
  slot: number;
  function: number;
  class_info: { class: number; desc?: string | undefined };
  id: { device: number; vendor: number };
  qdev_id: string;
  pci_bridge?: { devices?: PciDevice[] | undefined } | undefined;
}
export const pciInfoList = z.array(z.object({ bus: z.number(), devices: z.array(pciDevice) }));

export const cpuInfoFastList = z.array(z.object({ 'cpu-index': z.number(), 'qom-path': z.string() }));
export const memoryDeviceList = z.array(z.object({ type: z.string(), data: z.record(z.string(), z.unknown()) }));

export const qomListEntries = z.array(z.object({ name: z.string(), type: z.string() }));
