// A webhook receiver written from the FAQ's Node.js snippet (seed/faq-fr.txt, "Comment vérifier
// que mes webhooks proviennent bien de ZimSend ?"), wrapped in node's own http server so the
// tests need no npm package. Every request is verified exactly as the FAQ tells customers to:
//
//   const signature = req.headers['x-webhook-signature'];
//   const body = req.body; // Corps brut
//   const expectedSignature = crypto.createHmac('sha256', WEBHOOK_SECRET).update(body).digest('hex');
//   if (signature !== expectedSignature) { return res.status(401).send('Unauthorized'); }
//
// Each request is appended as one JSON line to RECORD_FILE (what the tests read): the verdict,
// the headers the Standard Webhooks check needs, and the raw body (base64, byte-exact).
//
// Environment: PORT, WEBHOOK_SECRET, RECORD_FILE, and the behaviour under test:
//   MODE=ok (default)  answer 200 after DELAY_MS (default 0)
//   MODE=hang          read the request, never answer
//   MODE=status        answer STATUS (e.g. 302 with a Location, or 500)
// It prints "listening <port>" once ready.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');

const WEBHOOK_SECRET = process.env.WEBHOOK_SECRET;
const RECORD_FILE = process.env.RECORD_FILE;
const MODE = process.env.MODE || 'ok';
const DELAY_MS = parseInt(process.env.DELAY_MS || '0', 10);
const STATUS = parseInt(process.env.STATUS || '500', 10);

function handle(req, res) {
  // --- the FAQ snippet, verbatim in substance ---
  const signature = req.headers['x-webhook-signature'];
  const body = req.body; // Corps brut
  const expectedSignature = crypto
    .createHmac('sha256', WEBHOOK_SECRET)
    .update(body)
    .digest('hex');
  const verified = signature === expectedSignature;
  // ---
  let event = {};
  try { event = JSON.parse(body.toString('utf8')); } catch (e) { /* recorded as is */ }
  fs.appendFileSync(RECORD_FILE, JSON.stringify({
    verified,
    method: req.method,
    path: req.url,
    event_id: event.event_id || null,
    event: event.event || null,
    received_at: Date.now() / 1000,
    headers: {
      'content-type': req.headers['content-type'] || null,
      'user-agent': req.headers['user-agent'] || null,
      'x-webhook-signature': signature || null,
      'webhook-id': req.headers['webhook-id'] || null,
      'webhook-timestamp': req.headers['webhook-timestamp'] || null,
      'webhook-signature': req.headers['webhook-signature'] || null,
    },
    body_base64: body.toString('base64'),
  }) + '\n');
  if (!verified) {
    res.writeHead(401); return res.end('Unauthorized');
  }
  if (MODE === 'hang') return; // never answer
  if (MODE === 'status') {
    res.writeHead(STATUS, { Location: 'http://127.0.0.1:9/elsewhere' });
    return res.end('status ' + STATUS);
  }
  setTimeout(() => { res.writeHead(200, { 'Content-Type': 'text/plain' }); res.end('ok'); }, DELAY_MS);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => { req.body = Buffer.concat(chunks); handle(req, res); });
});
server.listen(parseInt(process.env.PORT, 10), '127.0.0.1', () => {
  console.log('listening ' + server.address().port);
});
process.on('SIGTERM', () => process.exit(0));
