// A well-behaved agent for the collision session (see collision_agent.py): ramps up to
// its peak in RAMP_S, works HOLD_S in 0.1 s ticks while holding it, exits 0.
//   node collision_agent.js PEAK_MIB RAMP_S HOLD_S
"use strict";

const MIB = 1 << 20;
const PAGE = 4096;
const TICK_MS = 100;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const [peakMib, rampS, holdS] = process.argv.slice(2).map(Number);
  const steps = Math.max(1, Math.floor((rampS * 1000) / TICK_MS));
  const chunk = Math.floor((peakMib * MIB) / steps);
  const parts = [];
  for (let i = 0; i < steps; i++) {
    parts.push(Buffer.alloc(chunk, 1));
    await sleep(TICK_MS);
  }
  const ticks = Math.floor((holdS * 1000) / TICK_MS);
  for (let t = 0; t < ticks; t++) {
    if (t % 10 === 0) for (const b of parts) for (let i = 0; i < b.length; i += PAGE) b[i] = 2;
    await sleep(TICK_MS);
  }
}

main().then(() => process.exit(0));
