// Benchmark function with a real dependency: the AWS SDK for JavaScript v3 S3
// client, a sizeable npm package tree.
const { S3Client, ListBucketsCommand } = require('@aws-sdk/client-s3');

const client = new S3Client({ region: 'us-east-1', credentials: { accessKeyId: 'x', secretAccessKey: 'x' } });

exports.handler = async () => ({ sdk: 'client-s3', command: typeof ListBucketsCommand, region: await client.config.region() });
