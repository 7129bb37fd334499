// Which serial ports this machine has, and who holds one that is busy: for `keyproxy ports` and for
// the errors `keyproxy flash` and `keyproxy provision` give when --port is wrong.
//
// EspruinoTools lists ports through serialport's list() (udev on Linux) and drops Linux's /dev/ttyS*
// (legacy UARTs, present on every PC, almost never a handset). We read the device directory itself
// instead, for the names an Espruino board gets: the stable /dev/serial/by-id/* links (with the tty
// each points to), /dev/ttyUSB* (USB-serial adapters: FTDI, CP210x, CH340, as on ESP32 boards),
// /dev/ttyACM* (USB CDC: Espruino's own boards) and, on macOS, /dev/cu.* (the call-out side, which
// does not wait for carrier). Reading the directory needs no udev and no native code, and it can be
// pointed somewhere else (KEYPROXY_SERIAL_DIRS), which is how the tests give it a known set of ports.

import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync } from "node:fs";
import { join } from "node:path";
import { forTerminal } from "../gateway/log/terminal.ts";

/** Colon-separated directories scanned instead of /dev: a knob for tests and unusual systems. */
export const SERIAL_DIRS_ENV = "KEYPROXY_SERIAL_DIRS";

const TTY_NAME = /^(ttyUSB\d+|ttyACM\d+|cu\..+)$/;

export interface SerialPortEntry {
  /** What to pass as --port. */
  path: string;
  /** For a /dev/serial/by-id link: the tty it points to. */
  target?: string;
}

export function serialDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  const v = env[SERIAL_DIRS_ENV];
  return v ? v.split(":").filter((d) => d !== "") : ["/dev"];
}

function entries(dir: string): string[] {
  try {
    return readdirSync(dir).sort(byNumber);
  } catch {
    return []; // a directory that is not there (no by-id links without USB serial devices) lists nothing
  }
}

/** ttyUSB2 before ttyUSB10. */
function byNumber(a: string, b: string): number {
  return a.localeCompare(b, "en", { numeric: true });
}

/** The by-id links first (their names say which device is which), then every matching tty that no
 *  link points to. */
export function listSerialPorts(dirs: string[] = serialDirs()): SerialPortEntry[] {
  const out: SerialPortEntry[] = [];
  const linked = new Set<string>();
  for (const dir of dirs) {
    const byId = join(dir, "serial", "by-id");
    for (const name of entries(byId)) {
      const path = join(byId, name);
      try {
        const target = realpathSync(path);
        linked.add(target);
        out.push({ path, target });
      } catch {
        /* a link to a device that just went away */
      }
    }
  }
  for (const dir of dirs) {
    for (const name of entries(dir)) {
      const path = join(dir, name);
      if (!TTY_NAME.test(name) || linked.has(safeRealpath(path))) continue;
      out.push({ path });
    }
  }
  return out;
}

function safeRealpath(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

export function formatPort(p: SerialPortEntry): string {
  // by-id names come from the USB device's own descriptors: whoever made the device chose them.
  return forTerminal(p.target ? `${p.path} -> ${p.target}` : p.path);
}

/** Where we looked, for "no serial ports found". */
export function whereWeLooked(dirs: string[] = serialDirs()): string {
  return dirs.flatMap((d) => [join(d, "serial", "by-id", "*"), join(d, "ttyUSB*"), join(d, "ttyACM*"), join(d, "cu.*")]).join(", ");
}

/** A port that is there but refused: on Debian and Ubuntu the ttys belong to the dialout group. */
export const DIALOUT_HINT = "a port you can see but not open usually needs the dialout group: sudo usermod -aG dialout $USER, then log in again";

/** The hint for an empty list: the two usual reasons. */
export const NO_PORTS_HINT =
  "is the device plugged in with a data cable (some USB cables carry power only)? `dmesg` shows whether the kernel saw it; " + DIALOUT_HINT;

/** One sentence naming the ports there are, for an error about a port that is not there. */
export function describePorts(dirs: string[] = serialDirs()): string {
  const ports = listSerialPorts(dirs);
  if (ports.length === 0) return `no serial ports found (looked at ${whereWeLooked(dirs)}); ${NO_PORTS_HINT}`;
  return `the serial ports here: ${ports.map(formatPort).join(", ")}`;
}

// ---- who holds a port ---------------------------------------------------------------------------

export interface PortHolder {
  pid: number;
  /** The process's command name (/proc/<pid>/comm): its arguments are not read, they may hold secrets. */
  command: string;
}

/** Who holds `path`, other than this process (Linux; elsewhere none). When /proc/locks names the
 *  holder of a lock on the device, that process alone: a pty has its other end's helper, a USB port
 *  may have ModemManager peeking, and neither is what refuses us. Otherwise (a port made exclusive
 *  with TIOCEXCL) every process with it open, from /proc/<pid>/fd, as far as we may look. */
export function portHolders(path: string, procDir = "/proc"): PortHolder[] {
  let device: string;
  let fileId: string;
  try {
    device = realpathSync(path);
    const st = statSync(device);
    fileId = lockFileId(st.dev, st.ino);
  } catch {
    return [];
  }
  // /proc/locks and /proc/<pid>/comm are readable by anyone, another user's fd table is not: a lock
  // holder is named even when we cannot see its open files.
  const lockers = [...lockHolders(fileId, procDir)].filter((pid) => pid !== process.pid && existsSync(join(procDir, String(pid))));
  const holders = lockers.length > 0 ? lockers : openersOf(device, procDir);
  return holders.map((pid) => ({ pid, command: commandName(pid, procDir) }));
}

/** The processes other than this one with `device` open, as far as their fd tables are readable. */
function openersOf(device: string, procDir: string): number[] {
  const pids = entries(procDir).filter((n) => /^\d+$/.test(n)).map(Number).filter((pid) => pid !== process.pid);
  return pids.filter((pid) => entries(join(procDir, String(pid), "fd")).some((fd) => {
    try {
      return readlinkSync(join(procDir, String(pid), "fd", fd)) === device;
    } catch {
      return false;
    }
  }));
}

/** A file as /proc/locks names it: the major and minor of its filesystem's device in hex, its inode
 *  ("00:19:3"), parsed back to numbers so that zero-padding does not matter. */
function lockFileId(dev: number, ino: number): string {
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  return `${major}:${minor}:${ino}`;
}

/** Pids holding a lock on this file, per /proc/locks ("1: FLOCK  ADVISORY  WRITE 1234 00:19:3 0 EOF"). */
function lockHolders(fileId: string, procDir: string): Set<number> {
  const pids = new Set<number>();
  const file = join(procDir, "locks");
  if (!existsSync(file)) return pids;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const f = line.trim().split(/\s+/);
    // A lock someone waits for is shown as "1: -> FLOCK ...": not a holder.
    if (f.length < 6 || f[1] === "->") continue;
    const [major, minor, ino] = f[5].split(":");
    if (`${parseInt(major, 16)}:${parseInt(minor, 16)}:${ino}` === fileId) pids.add(Number(f[4]));
  }
  return pids;
}

function commandName(pid: number, procDir: string): string {
  try {
    return readFileSync(join(procDir, String(pid), "comm"), "utf8").trim();
  } catch {
    return "?";
  }
}

/** "held by pid 1234 (minicom)", or a way to find out. */
export function describeHolders(path: string): string {
  const holders = process.platform === "linux" ? portHolders(path) : [];
  if (holders.length === 0) return `another program has it open${process.platform === "linux" ? ` (\`fuser -v ${path}\` names it)` : ""}`;
  return `held by ${holders.map((h) => `pid ${h.pid} (${h.command})`).join(", ")}`;
}
