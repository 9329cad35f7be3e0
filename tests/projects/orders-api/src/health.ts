export const handler = async () => ({ statusCode: 200, body: JSON.stringify({ fn: "health", version: "v1" }) });
