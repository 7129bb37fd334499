// The one piece of runtime an application adds (flash/build.ts, `keyproxy build --app`): the bundle
// runs the board's entry first, which publishes the handset as the global KP when the device is
// provisioned, then the application's module, then this, which hands KP to the application.
// Without a handset (not provisioned) the application is not started and the boot goes on as usual.

import type { App } from "./api.ts";

export function startApp(main: App): void {
  if (global.KP) main(global.KP);
  else print("KP application not started: no handset");
}
