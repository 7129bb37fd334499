import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { BOARDS } from "../boards/index.ts";
import { buildFirmware } from "../flash/build.ts";
import { DEFAULT_LISTEN } from "../gateway/gateway.ts";
import { CALL_DONE, CALL_FAILED, callerApp, echoApp, startSim, whenRegistered } from "../emulator/sim.ts";
import { DEFAULT_DATA_DIR } from "./config.ts";
import { helpRows, hostPort, parse, positiveInt, UsageError } from "./args.ts";
import { forTerminal } from "../gateway/log/terminal.ts";

const HELP = `usage: keyproxy sim [--count <n>] [--board <id>] [--gateway <host:port>]
                    [--data-dir <dir>] [--bundle <file>] [--lifetime <s>]
                    [--prefix <name>] [--answer] [--call <name[@domain]>]
                    [--app <name>]

Boots n emulated handsets running the real firmware bundle (built for --board
unless --bundle is given) against a gateway, provisioning each one (sim-1 ...
sim-n) into the gateway's registry in --data-dir and into its own emulated
Storage under <data-dir>/sim/. Their console lines are printed with the
handset's name. Stop with Ctrl-C.

${helpRows([
  ["--count <n>", "handsets (default 2)"],
  ["--board <id>", `${Object.keys(BOARDS).join(", ")} (default puckjs)`],
  ["--gateway <host:port>", `the gateway's device link (default ${DEFAULT_LISTEN.host}:${DEFAULT_LISTEN.port})`],
  ["--data-dir <dir>", `the gateway's data directory (default ${DEFAULT_DATA_DIR})`],
  ["--bundle <file>", "a bundle made by keyproxy build (default: build it now)"],
  ["--lifetime <s>", "registration lifetime each handset asks for (default 3600)"],
  ["--prefix <name>", "the handsets' names are <name>-1 ... <name>-n (default sim)"],
  ["--answer", "every handset takes calls for --app and echoes what it gets"],
  ["--call <peer>", "the first handset calls <peer> (a name here, or name@domain behind another gateway) for --app once registered, sends three messages and hangs up; sim then exits, 0 when the call went through, 1 when it failed (the error's name is printed)"],
  ["--app <name>", "the application --answer and --call use (default chat)"],
])}`;

export async function simCommand(argv: string[]): Promise<number> {
  const o = parse(argv, {
    count: { type: "string" },
    board: { type: "string" },
    gateway: { type: "string" },
    "data-dir": { type: "string" },
    bundle: { type: "string" },
    lifetime: { type: "string" },
    prefix: { type: "string" },
    answer: { type: "boolean" },
    call: { type: "string" },
    app: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const board = o.board ?? "puckjs";
  // An unknown board is the operator's mistake (exit 2), not a firmware that fails to build.
  if (!Object.hasOwn(BOARDS, board)) throw new UsageError(`unknown board "${board}"; known boards: ${Object.keys(BOARDS).join(", ")}`);
  const app = o.app ?? "chat";
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(app)) throw new UsageError(`--app wants an application name (letters, digits, . _ -), got "${app}"`);
  if (o.prefix !== undefined && !/^[A-Za-z0-9._-]{1,40}$/.test(o.prefix)) throw new UsageError(`--prefix wants a short name (letters, digits, . _ -), got "${o.prefix}"`);
  if (o.call !== undefined && !/^[A-Za-z0-9._-]{1,64}(@[A-Za-z0-9._-]{1,190})?$/.test(o.call)) throw new UsageError(`--call wants a handset name or name@domain, got "${o.call}"`);
  const dataDir = o["data-dir"] ?? DEFAULT_DATA_DIR;
  if (!existsSync(join(dataDir, "keyproxy.db"))) throw new UsageError(`no gateway registry in ${dataDir}: start "keyproxy gateway --data-dir ${dataDir}" first`);
  let bundle: string;
  if (o.bundle) {
    if (!existsSync(o.bundle)) throw new UsageError(`no bundle at ${o.bundle}`);
    bundle = readFileSync(o.bundle, "utf8");
  } else {
    const r = await buildFirmware({ board, outDir: join(dataDir, "sim", "build") });
    if (!r.ok) throw new Error(`the ${board} firmware does not build:\n${r.problems.join("\n")}`);
    bundle = r.code;
  }
  const callerName = `${o.prefix ?? "sim"}-1`;
  const count = positiveInt(o.count, "--count", 2);
  // A call to another handset of this sim, which answers: wait for it to be registered before
  // calling, and for it to see the session close before exiting.
  const names = Array.from({ length: count }, (_, i) => `${o.prefix ?? "sim"}-${i + 1}`);
  const localCallee = o.answer && o.call && names.includes(o.call) ? o.call : undefined;
  let hungUp = false;
  let callEnded: (code: number) => void = () => {};
  const sim = await startSim({
    dataDir,
    board,
    bundle,
    count,
    gateway: o.gateway ? hostPort(o.gateway, "--gateway") : DEFAULT_LISTEN,
    lifetime: positiveInt(o.lifetime, "--lifetime", 3600),
    prefix: o.prefix,
    onLog: (id, line) => {
      console.log(forTerminal(`${id}: ${line}`));
      if (id === callerName && line.startsWith(CALL_FAILED)) callEnded(1);
      else if (id === callerName && line.startsWith(CALL_DONE)) {
        // A callee of this sim still has to hear the bye; one elsewhere is its own sim's business.
        if (localCallee) hungUp = true;
        else callEnded(0);
      } else if (hungUp && id === localCallee && / closed: /.test(line)) callEnded(0);
    },
  });
  let stopped = false;
  // With --call, sim exits when the call is over: 0 once the caller hung up, 1 when it failed.
  let exitCode = 0;
  const stop = new Promise<void>((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
    callEnded = (code) => {
      exitCode = code;
      resolve();
    };
  });
  // The applications are typed into the handsets' consoles, as a user would.
  if (o.answer) for (const d of sim.devices) d.eval(echoApp(app));
  if (o.call) {
    const [first] = sim.devices;
    const ready = (d: (typeof sim.devices)[number]) => whenRegistered(d, 60_000, () => stopped);
    const callee = localCallee ? sim.devices[names.indexOf(localCallee)] : undefined;
    void Promise.all([ready(first), callee ? ready(callee) : true]).then(([callerOk, calleeOk]) => {
      const ok = callerOk && calleeOk;
      if (ok) first.eval(callerApp(o.call as string, app));
      else if (!stopped) {
        console.error(`${callerOk ? o.call : callerName}: not registered after 60 s; not calling ${o.call}`);
        callEnded(1);
      }
    });
  }
  await stop;
  stopped = true;
  sim.stop();
  return exitCode;
}
