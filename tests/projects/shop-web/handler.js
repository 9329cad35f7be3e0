'use strict';
module.exports.home = async () => ({ statusCode: 200, body: 'shop v1' });
