// Placeholder until the provision command lands; replaced by its implementation.
export async function provisionCommand(_argv: string[]): Promise<number> {
  console.error("keyproxy provision: not available in this build yet");
  return 1;
}
