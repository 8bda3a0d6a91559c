// Test function: ES module handler.
export const handler = async (event) => ({ style: 'esm', got: event });
