export const handler = async () => ({ statusCode: 200, body: JSON.stringify({ fn: "list", version: "v1" }) });
