// Test function: keeps state across warm invocations (async handler).
let count = 0;
const big = Array.from({ length: 100000 }, (_, i) => i * 2);
console.log('node-state init done');

exports.handler = async (event, context) => {
  count += 1;
  const action = (event && event.action) || 'echo';
  console.log(`invocation ${count} action=${action}`);
  if (action === 'raise') throw new TypeError('boom');
  if (action === 'sleep') {
    await new Promise((resolve) => setTimeout(resolve, event.seconds * 1000));
    return 'slept';
  }
  if (action === 'exit') process.exit(4);
  return {
    count,
    event,
    last: big[big.length - 1],
    requestId: context.awsRequestId,
    remainingMs: context.getRemainingTimeInMillis(),
    functionName: context.functionName,
    memoryLimitInMB: context.memoryLimitInMB,
    uid: process.getuid(),
  };
};
