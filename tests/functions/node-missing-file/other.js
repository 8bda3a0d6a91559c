exports.handler = async () => 'not the configured file';
