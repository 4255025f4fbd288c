// Preloaded (node -r) into every child of the benchmark: when the benchmark
// process dies, the child is re-parented and stops itself with SIGTERM (a
// service then shuts down gracefully), so even a killed run leaves nothing behind.
// Plain CommonJS so that it loads before any TypeScript hook.
'use strict';
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.kill(process.pid, 'SIGTERM');
}, 500).unref();
