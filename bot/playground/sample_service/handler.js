const VERSION = "v0";
module.exports.hello = async () => ({ statusCode: 200, body: VERSION });
