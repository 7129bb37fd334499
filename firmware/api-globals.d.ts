// Espruino globals an application may use besides those of the runtime (firmware/espruino.d.ts):
// buttons, pins, watches and the boards' own objects. The runtime does not use them. Which exist
// depends on the board: BTN and LED1 on a Puck.js, BTN1 and Bangle on a Bangle.js 2, analogRead's
// pins on an ESP32 (espruino.com/Reference).

/** A pin: D0, D1, ... or its name as a string ("D36"). */
type Pin = number | string;

interface EspruinoE {
  /** The chip's temperature in degrees Celsius (nRF52, ESP32). */
  getTemperature(): number;
}

interface WatchEvent {
  state: boolean;
  time: number;
  lastTime: number;
}

/** Calls fn when the pin changes; returns an id for clearWatch. */
declare function setWatch(fn: (e: WatchEvent) => void, pin: Pin, options?: { edge?: "rising" | "falling" | "both"; repeat?: boolean; debounce?: number }): number;
declare function clearWatch(id?: number): void;
declare function digitalWrite(pin: Pin, value: boolean | number): void;
declare function digitalRead(pin: Pin): number;
declare function digitalPulse(pin: Pin, value: boolean | number, ms: number | number[]): void;
/** 0..1 */
declare function analogRead(pin: Pin): number;

/** Puck.js: its button and LEDs (red, green, blue). Bangle.js 2: BTN1 (= BTN). */
declare const BTN: Pin;
declare const BTN1: Pin;
declare const LED1: Pin;
declare const LED2: Pin;
declare const LED3: Pin;

/** Puck.js only. */
declare const Puck: {
  /** Light level 0..1. */
  light(): number;
  getBatteryPercentage(): number;
};

/** Bangle.js 2 only. */
declare const Bangle: {
  buzz(ms?: number, strength?: number): Promise<void>;
  setLCDPower(on: boolean): void;
  on(ev: "touch", cb: (button: number, xy: { x: number; y: number }) => void): void;
};

/** Bangle.js 2 only: the screen. */
declare const g: {
  clear(reset?: boolean): typeof g;
  setFont(name: string, size?: number): typeof g;
  setFontAlign(x: number, y: number, rotation?: number): typeof g;
  drawString(text: string, x: number, y: number, solid?: boolean): typeof g;
  getWidth(): number;
  getHeight(): number;
  flip(): void;
};
