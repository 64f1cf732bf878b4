// Child process: the zero-delay fake OpenAI server alone, so that a CPU profile of the caller holds
// only the client and the pipeline. Sends { baseURL } over IPC; exits when the parent disconnects.
import { FakeOpenAIServer } from '../../lib/testing/index.js';

async function main(): Promise<void> {
  const fake = await FakeOpenAIServer.start();
  setInterval(() => fake.reset(), 200).unref();
  process.on('disconnect', () => {
    void fake.close().then(() => process.exit(0));
  });
  process.send!({ baseURL: fake.baseURL });
}

main().catch((err: unknown) => {
  console.error('fake upstream failed:', err);
  process.exit(1);
});
