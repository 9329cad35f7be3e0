'use strict';
// Serverless v3 talks to AWS through aws-sdk v2, which ignores AWS_ENDPOINT_URL (the SDKs of osls and
// of serverless-domain-manager honour it). Teams deploying to LocalStack use serverless-localstack for
// this; this fixture's plugin does only that part: point every aws-sdk v2 client at AWS_ENDPOINT_URL.
const endpoint = process.env.AWS_ENDPOINT_URL;
if (endpoint) {
  const AWS = require('aws-sdk');
  AWS.config.update({ endpoint, s3ForcePathStyle: true, sslEnabled: endpoint.startsWith('https:') });
}
class MotoEndpoint {}
module.exports = MotoEndpoint;
