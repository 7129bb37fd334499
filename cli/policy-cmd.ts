// Placeholder until the policy command lands; replaced by its implementation.
export async function policyCommand(_argv: string[]): Promise<number> {
  console.error("keyproxy policy: not available in this build yet");
  return 1;
}
