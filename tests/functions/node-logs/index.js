// Logs at every level through console.
exports.handler = async (event) => {
  console.log('quiet', event.n);
  console.warn('loud', event.n);
  console.error(new Error('boom'));
  return { ok: true };
};
