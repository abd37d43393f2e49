// A bench/run peer: Node's http-proxy in front of one upstream, doing what
// wasmgate's two bundled filters do, in JS: a sliding-window rate limit
// (the estimate of plugins/rate_limiter: prev * (window - elapsed) / window
// + curr, denied requests un-counted) and redaction of the authorization,
// cookie and x-api-key request headers.
//
//   node proxy.js --port 8080 --upstream http://127.0.0.1:9000 [--limit N] [--no-filters]
'use strict';

const http = require('http');
const httpProxy = require('http-proxy');

function parseArgs(argv) {
  const args = { port: 8080, upstream: 'http://127.0.0.1:9000', limit: 100000000, windowMs: 60000, filters: true };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') args.port = Number(argv[++i]);
    else if (a === '--upstream') args.upstream = argv[++i];
    else if (a === '--limit') args.limit = Number(argv[++i]);
    else if (a === '--no-filters') args.filters = false;
    else throw new Error('unknown argument ' + a);
  }
  return args;
}

const REDACT = ['authorization', 'cookie', 'x-api-key'];

/** Counters by key with an expiry, like the gateway's memory counter store. */
class Counters {
  constructor() {
    this.values = new Map();
  }
  get(key, now) {
    const e = this.values.get(key);
    if (e === undefined || e.expires <= now) return 0;
    return e.value;
  }
  incr(key, delta, ttlMs, now) {
    let e = this.values.get(key);
    if (e === undefined || e.expires <= now) {
      e = { value: 0, expires: now + ttlMs };
      this.values.set(key, e);
    }
    e.value += delta;
    return e.value;
  }
  sweep(now) {
    for (const [k, e] of this.values) if (e.expires <= now) this.values.delete(k);
  }
}

function makeRateLimit(limit, windowMs, counters) {
  const policy = '"default";q=' + limit + ';w=' + Math.ceil(windowMs / 1000);
  return function rateLimit(req, res) {
    const now = Date.now();
    const index = Math.floor(now / windowMs);
    const elapsed = now - index * windowMs;
    const prefix = 'rl:' + req.socket.remoteAddress + ':';
    const prev = counters.get(prefix + (index - 1), now);
    const currKey = prefix + index;
    const curr = counters.incr(currKey, 1, 2 * windowMs, now);
    const estimate = prev * (windowMs - elapsed) / windowMs + curr;
    const reset = Math.max(1, Math.ceil((windowMs - elapsed) / 1000));
    if (estimate > limit) {
      counters.incr(currKey, -1, 2 * windowMs, now);
      res.writeHead(429, {
        'content-type': 'text/plain',
        'retry-after': String(reset),
        'ratelimit-policy': policy,
        'ratelimit': '"default";r=0;t=' + reset,
      });
      res.end('Too Many Requests: retry in ' + reset + ' s\n');
      return false;
    }
    res.setHeader('ratelimit-policy', policy);
    res.setHeader('ratelimit', '"default";r=' + Math.floor(limit - estimate) + ';t=' + reset);
    return true;
  };
}

function redact(req) {
  for (const name of REDACT) {
    if (req.headers[name] !== undefined) req.headers[name] = 'REDACTED';
  }
}

function main() {
  const args = parseArgs(process.argv);
  const agent = new http.Agent({ keepAlive: true, maxFreeSockets: 64 });
  const proxy = httpProxy.createProxyServer({ target: args.upstream, agent, xfwd: true });
  proxy.on('error', (err, req, res) => {
    if (res && !res.headersSent && typeof res.writeHead === 'function') {
      res.writeHead(502, { 'content-type': 'text/plain' });
    }
    if (res && typeof res.end === 'function') res.end('bad gateway\n');
  });
  const counters = new Counters();
  setInterval(() => counters.sweep(Date.now()), 10000).unref();
  const rateLimit = makeRateLimit(args.limit, args.windowMs, counters);
  const server = http.createServer((req, res) => {
    if (args.filters) {
      if (!rateLimit(req, res)) return;
      redact(req);
    }
    proxy.web(req, res);
  });
  server.keepAliveTimeout = 120000;
  server.listen(args.port, '127.0.0.1', () => {
    process.stdout.write('node proxy listening on 127.0.0.1:' + args.port + '\n');
  });
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
}

main();
