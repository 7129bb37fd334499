// What the BLE central uses of @stoprocent/noble (2.x), and nothing more: the real library and the
// test double (test/support/ble-double.ts) both fit these shapes, so the central's own logic runs the
// same over either. Names and shapes are the library's (its index.d.ts).

export type AdapterState = "poweredOn" | "poweredOff" | "unauthorized" | "unsupported" | "unknown" | "resetting";

export interface NobleCharacteristic {
  readonly uuid: string;
  writeAsync(data: Buffer, withoutResponse: boolean): Promise<void>;
  subscribeAsync(): Promise<void>;
  on(event: "data", listener: (data: Buffer, isNotification: boolean) => void): unknown;
  removeAllListeners(event?: string): unknown;
}

export interface NoblePeripheral {
  /** The library's handle for it: the address without colons on Linux. */
  readonly id: string;
  readonly advertisement: { localName?: string };
  readonly rssi: number;
  /** The ATT MTU once negotiated, else null. */
  readonly mtu: number | null;
  readonly state: string;
  connectAsync(): Promise<void>;
  disconnectAsync(): Promise<void>;
  discoverSomeServicesAndCharacteristicsAsync(serviceUUIDs: string[], characteristicUUIDs: string[]): Promise<{ characteristics: NobleCharacteristic[] }>;
  once(event: "disconnect", listener: (reason: number | string) => void): unknown;
  removeAllListeners(event?: string): unknown;
}

export interface Noble {
  readonly state: AdapterState;
  on(event: "stateChange", listener: (state: AdapterState) => void): unknown;
  on(event: "discover", listener: (peripheral: NoblePeripheral) => void): unknown;
  removeListener(event: string, listener: (...args: any[]) => void): unknown;
  startScanningAsync(serviceUUIDs?: string[], allowDuplicates?: boolean): Promise<void>;
  stopScanningAsync(): Promise<void>;
  /** Releases the adapter (the library's sockets keep the process alive until then). */
  stop?(): void;
}
