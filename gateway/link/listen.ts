// Listening on a TCP address, for the ports that take outside connections (the device link, the BLE
// bridges' port): resolves with the address actually bound (port 0 picks a free one), rejects with
// the bind error (EADDRINUSE, EACCES) for the caller to word. The error listener stays: a later error
// then settles nothing, but does not go unhandled and end the process.

import type net from "node:net";

export function listenOn(server: net.Server, host: string, port: number): Promise<{ host: string; port: number }> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      const a = server.address() as net.AddressInfo;
      resolve({ host: a.address, port: a.port });
    });
  });
}
