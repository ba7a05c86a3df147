// A scripted Node agent with a realistic memory shape; exits 0 once its work is done.
//
//   node node_agent.js steady  HOLD_MIB WORK_S
//   node node_agent.js spiky   HOLD_MIB WORK_S BURST_MIB BURST_S PERIOD_S
//   node node_agent.js runaway STEP_MIB EVERY_MS
//
// Buffers are filled as they are allocated (Buffer.alloc(n, 1)), so the memory is
// resident at once, as a tool output or file read into a Buffer would be.
"use strict";

const MIB = 1 << 20;
const PAGE = 4096;

function hold(mib) {
  // One Buffer may not exceed buffer.constants.MAX_LENGTH; 64 MiB pieces stay far below it.
  const parts = [];
  let left = Math.floor(mib * MIB);
  while (left > 0) {
    const n = Math.min(left, 64 * MIB);
    parts.push(Buffer.alloc(n, 1));
    left -= n;
  }
  return parts;
}

function touch(parts) {
  for (const b of parts) for (let i = 0; i < b.length; i += PAGE) b[i] = 2;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function steady(holdMib, workS) {
  const data = hold(holdMib);
  const end = Date.now() + workS * 1000;
  while (Date.now() < end) {
    touch(data);
    await sleep(Math.min(1000, Math.max(0, end - Date.now())));
  }
}

async function spiky(holdMib, workS, burstMib, burstS, periodS) {
  const data = hold(holdMib);
  const end = Date.now() + workS * 1000;
  while (Date.now() < end) {
    let burst = hold(burstMib);
    await sleep(burstS * 1000);
    burst = null;
    touch(data);
    await sleep(Math.max(0, Math.min((periodS - burstS) * 1000, end - Date.now())));
  }
}

async function runaway(stepMib, everyMs) {
  const leak = [];
  for (;;) {
    leak.push(hold(stepMib));
    await sleep(everyMs);
  }
}

async function main() {
  const [shape, ...rest] = process.argv.slice(2);
  const n = rest.map(Number);
  if (shape === "steady") await steady(n[0], n[1]);
  else if (shape === "spiky") await spiky(n[0], n[1], n[2], n[3], n[4]);
  else if (shape === "runaway") await runaway(n[0], n[1]);
  else {
    process.stderr.write(`unknown shape ${shape}\n`);
    process.exit(2);
  }
  process.exit(0);
}

main();
