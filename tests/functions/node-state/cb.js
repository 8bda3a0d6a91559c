// Test function: callback-style handler.
exports.handler = (event, context, callback) => {
  setTimeout(() => callback(null, { style: 'callback', got: event }), 5);
};
