#!/usr/bin/env bash
# Builds the real Espruino interpreters keyproxy judges its firmware on: Linux builds of Espruino
# sized like each board, from Espruino's own source (docs/INTERPRETER.md).
#
#   bash interpreter/build.sh [--source <Espruino source .tar.xz or folder>] [--out <folder>] [--boards "puck bangle esp32"]
#
#   --source  an Espruino source tree or tarball (default: ../shared/espruino/espruino-*-src.tar.xz
#             beside this repository, else $ESPRUINO_SRC); a `git clone` of github.com/espruino/Espruino
#             at tag 2v29 works too
#   --out     where the binaries go (default: .espruino/bin, where the tests look after
#             $KEYPROXY_ESPRUINO and ../shared/espruino/bin)
#
# For each board: a 32-bit build (static i386; the JsVar layout of the ARM boards, so its
# process.memory() is the one to budget against; runs under qemu-i386 where the kernel lacks i386)
# and a native 64-bit one (for timing only):
#   espruino-puck    2,630 variables (PUCKJS.py), SHA256 + require("crypto").AES, net
#   espruino-bangle  12,000 variables (BANGLEJS2.py), SHA256/512 + only the global AES.ccm*, unicode, net
#   espruino-esp32   16,383 variables (ESP32.py's 'variables'; a real ESP32 may get fewer: it sizes
#                    the pool from the heap left at boot), SHA256/512 + require("crypto").AES, net
# Each reports process.env.BOARD as KP_PUCK, KP_BANGLE or KP_ESP32 (flash/serial.ts SIZED_LINUX_BOARD).
# Needs: make, python3, gcc, gcc-multilib (and qemu-user to run the 32-bit ones on a 64-bit-only kernel).
#   apt-get install gcc-multilib qemu-user
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SOURCE="" OUT="$REPO/.espruino/bin" BOARDS="puck bangle esp32"
while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --boards) BOARDS=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "interpreter/build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$SOURCE" ]; then
  SOURCE=$(ls "$REPO"/../shared/espruino/espruino-*-src.tar.xz 2>/dev/null | head -n1 || true)
  SOURCE=${SOURCE:-${ESPRUINO_SRC:-}}
fi
[ -n "$SOURCE" ] && [ -e "$SOURCE" ] || { echo "interpreter/build.sh: no Espruino source: pass --source <tarball or folder> (e.g. a clone of github.com/espruino/Espruino at 2v29)" >&2; exit 2; }
command -v make >/dev/null && command -v python3 >/dev/null && command -v gcc >/dev/null || { echo "interpreter/build.sh: needs make, python3 and gcc" >&2; exit 2; }
echo 'int main(void){return 0;}' > /tmp/kp-m32-check.c
gcc -m32 -static -o /tmp/kp-m32-check /tmp/kp-m32-check.c 2>/dev/null || { echo "interpreter/build.sh: gcc cannot build 32-bit programs: apt-get install gcc-multilib" >&2; exit 2; }

mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -d "$SOURCE" ]; then cp -a "$SOURCE/." "$WORK/"; else tar -xJf "$SOURCE" -C "$WORK"; fi
SRC=$WORK
# Espruino's Makefile asks git for a version suffix.
[ -d "$SRC/.git" ] || ( cd "$SRC" && git init -q && git -c user.name=build -c user.email=build@localhost commit -q --allow-empty -m "Espruino source" )

# The Linux target's fake flash reads ./espruino.flash with an open/seek/read/close per read; code
# runs from Storage 16 bytes at a time, so timings would measure the host's file system. Serve reads
# from a RAM copy, dropped on every write or erase. HAL only: interpreter and memory accounting untouched.
python3 - "$SRC/targets/linux/jshardware.c" <<'PATCH'
import sys
p = sys.argv[1]; s = open(p).read()
if "kpReadCache" not in s:
    def once(a, b):
        global s
        assert s.count(a) == 1, a
        s = s.replace(a, b)
    once("static FILE *jshFlashOpenFile(bool dontCreate) {", """static unsigned char *kpReadCache = 0; // keyproxy interpreter/build.sh
static FILE *jshFlashOpenFile(bool dontCreate);
static void kpReadCacheFill(void) {
  if (kpReadCache) return;
  kpReadCache = malloc(FLASH_TOTAL);
  memset(kpReadCache, 0xFF, FLASH_TOTAL);
  FILE *f = jshFlashOpenFile(true);
  if (f) { fseek(f, 0, SEEK_SET); size_t n = fread(kpReadCache, 1, FLASH_TOTAL, f); (void)n; fclose(f); }
}
static FILE *jshFlashOpenFile(bool dontCreate) {""")
    once("void jshFlashErasePage(uint32_t addr) {", "void jshFlashErasePage(uint32_t addr) {\n  free(kpReadCache); kpReadCache = 0;")
    once("void jshFlashWrite(void *buf, uint32_t addr, uint32_t len) {", "void jshFlashWrite(void *buf, uint32_t addr, uint32_t len) {\n  free(kpReadCache); kpReadCache = 0;")
    once("""  addr -= FLASH_START;

  FILE *f = jshFlashOpenFile(true);""", """  addr -= FLASH_START;
  kpReadCacheFill();
  if (addr + len <= FLASH_TOTAL) { memcpy(buf, kpReadCache + addr, len); return; }

  FILE *f = jshFlashOpenFile(true);""")
    open(p, "w").write(s)
PATCH

# The Linux target reads the console on a thread of its own, which pushes each byte into the IO event
# queue while the main loop pops from it; jshInterruptOff/On, which guard that queue on a board (where
# the pusher is an interrupt), do nothing on Linux. Now and then a byte is lost or replaced, or the
# queue is corrupted and the interpreter crashes (docs/INTERPRETER.md, "A byte lost, or a crash").
# The thread hands its bytes to the main loop through a one-writer, one-reader ring of its own, and
# jshIdle (the main loop) pushes them into the queue, so that only the main loop ever touches the
# queue; the thread still acts on Ctrl-C as it arrives, as a board's interrupt does. HAL only.
python3 - "$SRC/targets/linux/jshardware.c" <<'PATCH'
import sys
p = sys.argv[1]; s = open(p).read()
def once(a, b):
    global s
    assert s.count(a) == 1, a
    s = s.replace(a, b)
ring = """
// keyproxy interpreter/build.sh: console bytes from the input thread to the main loop.
#define KP_RX_SIZE 4096
static volatile unsigned char kpRx[KP_RX_SIZE];
static volatile unsigned int kpRxHead = 0, kpRxTail = 0; // head: the thread's; tail: the main loop's
static void kpRxToQueue(void) {
  while (kpRxTail != kpRxHead && jshHasEventSpaceForChars(IOEVENT_MAX_LEN + 2)) {
    char buf[IOEVENT_MAX_LEN];
    unsigned int n = 0;
    while (kpRxTail != kpRxHead && n < sizeof(buf)) {
      buf[n++] = (char)kpRx[kpRxTail];
      __sync_synchronize();
      kpRxTail = (kpRxTail + 1) % KP_RX_SIZE;
    }
    jshPushEvent(EV_USBSERIAL, (uint8_t*)buf, n); // not jshPushIOCharEvents: the thread saw any Ctrl-C
  }
}
"""
if "kpRxToQueue" not in s:
    once("pthread_t inputThread;\nbool isInitialised;\n", "pthread_t inputThread;\nbool isInitialised;\n" + ring)
    once("""    while (kbhit() && (jshGetEventsUsed()<IOBUFFERMASK/2)) {
      int ch = getch();
      if (ch<0) break;
      if (ch==4) exit(0); // exit on Ctrl-D
      jshPushIOCharEvent(EV_USBSERIAL, (char)ch);
    }""", """    while (kbhit() && (kpRxHead + 1) % KP_RX_SIZE != kpRxTail) {
      int ch = getch();
      if (ch<0) break;
      if (ch==4) exit(0); // exit on Ctrl-D
      if (ch==3 && jsiGetConsoleDevice()==EV_USBSERIAL) jsiCtrlC();
      kpRx[kpRxHead] = (unsigned char)ch;
      __sync_synchronize();
      kpRxHead = (kpRxHead + 1) % KP_RX_SIZE;
      shortSleep = true;
    }""")
    once("void jshIdle() {\n  // all done in the thread now...\n}", "void jshIdle() {\n  kpRxToQueue(); // the console's bytes enter the IO queue on the main loop\n}")
    once("bool jshSleep(JsSysTime timeUntilWake) {", "bool jshSleep(JsSysTime timeUntilWake) {\n  if (kpRxTail != kpRxHead) return true; // console bytes wait for the main loop")
    open(p, "w").write(s)
PATCH

board_file() { # NAME BITS LIBRARIES EXTRA-MAKEFILE-LINES
  local m32=""
  [ "$2" = 32 ] && m32="'CFLAGS+=-m32', 'LDFLAGS+=-m32 -static', 'DEFINES+=-DUSE_CALLFUNCTION_HACK',"
  cat > "$SRC/boards/$1.py" <<BOARD
#!/bin/false
# keyproxy interpreter/build.sh: Linux Espruino sized like a board
import pinutils;
info = {
 'name' : "Linux ($1)", 'default_console' : "EV_USBSERIAL", 'variables' : 0, 'binary_name' : 'espruino',
 'build' : { 'optimizeflags' : '-Os', 'libraries' : [ $3 ],
   'makefile' : [ $m32 $4 'DEFINES+=-DSPIFLASH_BASE=0 -DSPIFLASH_LENGTH=FLASH_SAVED_CODE_LENGTH', 'LINUX=1' ] }
};
chip = { 'part' : "LINUX", 'family' : "LINUX", 'package' : "", 'ram' : 0, 'flash' : 256, 'speed' : -1,
         'usart' : 6, 'spi' : 3, 'i2c' : 3, 'adc' : 0, 'dac' : 0 };
devices = { 'USB' : {} };
def get_pins():
  return pinutils.generate_pins(0,32)
BOARD
}

build() { # BOARD-NAME VARIABLES OUT-NAME
  local t; t=$(date +%s)
  mkdir -p "$SRC/gen_$1" "$SRC/bin_$1"
  ( cd "$SRC" && make -j"$(nproc)" BOARD="$1" VARIABLES="$2" PYTHON=python3 RELEASE=1 OPENWRT_UCLIBC=1 \
      GENDIR="gen_$1" OBJDIR="obj_$1" BINDIR="bin_$1" >"$OUT/$3.build.log" 2>&1 ) \
    || { tail -30 "$OUT/$3.build.log"; echo "interpreter/build.sh: $3 failed (log: $OUT/$3.build.log)" >&2; exit 1; }
  cp "$SRC/bin_$1/espruino" "$OUT/$3"
  echo "interpreter/build.sh: $OUT/$3 ($(( $(date +%s) - t )) s)"
}

wrap() { # NAME: runs NAME.i386 natively where the kernel can, else under qemu-i386
  printf '#!/bin/sh\nd=$(dirname "$0")\nif command -v qemu-i386 >/dev/null 2>&1; then exec qemu-i386 "$d/%s.i386" "$@"; fi\nexec "$d/%s.i386" "$@"\n' "$1" "$1" > "$OUT/$1"
  chmod +x "$OUT/$1"
}

for b in $BOARDS; do
  case "$b" in
    puck)   libs="'NET','CRYPTO','SHA256','AES'"; extra=""; vars=2630 ;;
    bangle) libs="'NET','CRYPTO','SHA256','SHA512','AES_CCM'"; extra="'DEFINES+=-DESPR_UNICODE_SUPPORT=1',"; vars=12000 ;;
    esp32)  libs="'NET','CRYPTO','SHA256','SHA512','AES'"; extra=""; vars=16383 ;;
    *) echo "interpreter/build.sh: unknown board $b (puck, bangle, esp32)" >&2; exit 2 ;;
  esac
  NAME=KP_$(echo "$b" | tr a-z A-Z)
  board_file "$NAME" 32 "$libs" "$extra"
  board_file "${NAME}64" 64 "$libs" "$extra"
  build "$NAME" "$vars" "espruino-$b.i386"; wrap "espruino-$b"
  build "${NAME}64" "$vars" "espruino-$b-64"
  # The 64-bit build reports KP_<BOARD>64; both stand for the same board.
done
for f in "$OUT"/espruino-*; do
  case "$f" in *.log|*.i386) continue ;; esac
  d=$(mktemp -d)
  ( cd "$d" && timeout 60 "$f" -e 'var m=process.memory();print("'"$(basename "$f")"': "+process.env.BOARD+" "+process.version+", "+m.total+" variables of "+m.blocksize+" bytes");quit()' 2>/dev/null | grep "^espruino" ) || echo "interpreter/build.sh: $f does not run here" >&2
  rm -rf "$d"
done
