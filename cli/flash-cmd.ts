// Placeholder until the flash command lands; replaced by its implementation.
export async function flashCommand(_argv: string[]): Promise<number> {
  console.error("keyproxy flash: not available in this build yet");
  return 1;
}
