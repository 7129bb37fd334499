// Placeholder until the monitor command lands; replaced by its implementation.
export async function monitorCommand(_argv: string[]): Promise<number> {
  console.error("keyproxy monitor: not available in this build yet");
  return 1;
}
