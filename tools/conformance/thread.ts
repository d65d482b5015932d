// Role T: a worker thread of the runner serving Agent ops on the runner's device fd.
import { parentPort, workerData } from 'node:worker_threads';
import { Agent, AgentConfig, Op, dec, enc } from './agent.js';

const { cfg, fd } = dec(workerData as string) as { cfg: AgentConfig; fd: number };
const agent = new Agent(cfg);
agent.fd = fd;
parentPort!.on('message', (m: string) => {
  const { id, op } = dec(m) as { id: number; op: Op };
  parentPort!.postMessage(enc({ id, out: agent.run(op) }));
});
