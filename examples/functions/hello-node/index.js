// Sample function deployed by `thaw demo`.
const greeting = `Hello from Node.js ${process.version}`;

exports.handler = async (event, context) => {
  const name = (event && event.name) || 'world';
  return { message: `${greeting}, ${name}!`, requestId: context.awsRequestId };
};
