// Which handset's radio is which device: the central knows a handset by its Bluetooth address, the
// gateway by the id it joined with. A carried link joins as a device; from then on that device's
// monitoring state shows the radio of the link's address (RadioState), connected or not.

import type { RadioState } from "../monitor/monitor.ts";
import { linkAddress } from "./central.ts";

/** Radios kept at most: addresses come from the air, anyone can make up more of them. */
const MAX_RADIOS = 4096;

export class RadioBook {
  private readonly radios = new Map<string, RadioState>();
  private readonly deviceOf = new Map<string, string>();
  private readonly addressOf = new Map<string, string>();

  /** changed(device): a device's radio connected or disconnected (its monitoring state is due). */
  constructor(private readonly changed: (deviceId: string) => void = () => {}) {}

  /** A radio's new state. RSSI and last-seen changes alone are not announced: they come with the next
   *  periodic state (they change with every advertisement). */
  update(r: RadioState): void {
    const key = linkAddress(r.via, r.address);
    const before = this.radios.get(key);
    if (!before && this.radios.size >= MAX_RADIOS) return;
    this.radios.set(key, r);
    const dev = this.deviceOf.get(key);
    if (dev && before?.connected !== r.connected) this.changed(dev);
  }

  /** The link from linkAddress joined as deviceId. */
  bind(deviceId: string, address: string): void {
    const old = this.addressOf.get(deviceId);
    if (old && old !== address) this.deviceOf.delete(old);
    this.addressOf.set(deviceId, address);
    this.deviceOf.set(address, deviceId);
    this.changed(deviceId);
  }

  /** A bridge went away: its radios are no longer known to be connected. */
  forgetVia(via: string): void {
    for (const [key, r] of this.radios) {
      if (r.via !== via || !r.connected) continue;
      this.radios.set(key, { ...r, connected: false });
      const dev = this.deviceOf.get(key);
      if (dev) this.changed(dev);
    }
  }

  forDevice(deviceId: string): RadioState | undefined {
    const a = this.addressOf.get(deviceId);
    return a === undefined ? undefined : this.radios.get(a);
  }
}
