export const handler = async () => ({ statusCode: 200, body: JSON.stringify({ fn: "create", version: "v1" }) });
