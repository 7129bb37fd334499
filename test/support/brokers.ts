// A test that needs a real MQTT broker runs twice: against the in-process broker (always), and
// against Mosquitto when KEYPROXY_TEST_MQTT_URL names one (.ci/run starts one); without it the
// Mosquitto variant is a skip that says so.
import { test } from "node:test";
import { startBroker } from "../../gateway/monitor/embedded-broker.ts";

export function onEachBroker(inProcessTitle: string, mosquittoTitle: string, run: (url: string) => Promise<void>): void {
  test(inProcessTitle, async () => {
    const broker = await startBroker({ host: "127.0.0.1", port: 0 });
    try {
      await run(broker.url);
    } finally {
      await broker.close();
    }
  });
  const mosquitto = process.env.KEYPROXY_TEST_MQTT_URL;
  test(mosquittoTitle, async (t) => {
    if (!mosquitto) {
      t.skip("KEYPROXY_TEST_MQTT_URL is not set: no Mosquitto here (.ci/run starts one); only the in-process broker was tested");
      return;
    }
    await run(mosquitto);
  });
}
