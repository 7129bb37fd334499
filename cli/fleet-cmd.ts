// Placeholder until the fleet command lands; replaced by its implementation.
export async function fleetCommand(_argv: string[]): Promise<number> {
  console.error("keyproxy fleet: not available in this build yet");
  return 1;
}
