// test-case-name: tests.test_bundled_filters_unit
//
// Sliding-window rate limiter on the host's shared counters.
//
// Config: {limit: int > 0, window: duration, key: "client_ip" | "header:NAME"}
// (limit and window are required; key defaults to client_ip). A route may
// override any of them with `route_config`.
//
// Each window of `window` ms has its own counter; the estimate of requests in
// the last `window` ms is
//     prev * (window - elapsed_in_current) / window + curr
// Only allowed requests are counted (a denied one is un-counted at once), so
// a client that backs off recovers within a window instead of being locked
// out by its own retries. Counting first and checking after keeps the limit
// exact under concurrency: two racing requests cannot both take the last slot.
//
// With `key: header:NAME` a request without that header is limited by its
// client IP instead (never by one shared bucket that a single client could
// exhaust for everyone); header values are stored as "h:<value>" so they
// cannot collide with an IP address.

import {
  Action,
  ByteBuilder,
  Json,
  JsonKind,
  Request,
  counterGetBytes,
  counterIncrBytes,
  logError,
  mergeObjects,
  nowMs,
  parseDuration,
  readConfig,
  readRequest,
  respond,
  configShapeError,
} from "../sdk";

export { wasmgate_alloc } from "../sdk";

const CONFIG_KEYS: Array<string> = ["limit", "window", "key"];
/** Route overrides are parsed once per distinct route_config, then cached. */
const MAX_CACHED_OVERRIDES = 64;

class Limits {
  limit: i64 = 0;
  windowMs: i64 = 0;
  /** Lower-case header name, or "" to key by client IP. */
  header: string = "";
  /** The RateLimit-Policy header value, built once. */
  policy: string = "";
}

class Parsed {
  limits: Limits | null = null;
  error: string = "";
}

let baseConfig: Json = Json.Obj();
let baseLimits: Limits | null = null;
const overrides = new Map<string, Limits>();

function parseLimits(cfg: Json): Parsed {
  const r = new Parsed();
  const shape = configShapeError(cfg, CONFIG_KEYS);
  if (shape.length > 0) {
    r.error = shape;
    return r;
  }
  const l = new Limits();
  const limit = cfg.get("limit");
  if (limit === null) {
    r.error = "'limit' is required";
    return r;
  }
  if (limit.kind != JsonKind.NUMBER || limit.n != Math.floor(limit.n) || limit.n < 1 || limit.n > 1e15) {
    r.error = "'limit' must be a positive integer";
    return r;
  }
  l.limit = <i64>limit.n;
  const window = cfg.get("window");
  if (window === null) {
    r.error = "'window' is required (e.g. \"60s\")";
    return r;
  }
  l.windowMs = parseDuration(window);
  if (l.windowMs <= 0) {
    r.error = "'window' must be a positive duration such as \"500ms\", \"2s\", \"1m\" or a number of seconds";
    return r;
  }
  const key = cfg.get("key");
  if (key !== null) {
    if (key.kind != JsonKind.STRING) {
      r.error = "'key' must be \"client_ip\" or \"header:NAME\"";
      return r;
    }
    if (key.s == "client_ip") {
      l.header = "";
    } else if (key.s.startsWith("header:") && key.s.length > 7) {
      l.header = key.s.substring(7).trim().toLowerCase();
    } else {
      r.error = "'key' must be \"client_ip\" or \"header:NAME\", not \"" + key.s + "\"";
      return r;
    }
  }
  l.policy = "\"default\";q=" + l.limit.toString() + ";w=" + ceilSeconds(l.windowMs).toString();
  r.limits = l;
  return r;
}

/** Whole seconds, rounded up, at least 1: what the headers carry. */
function ceilSeconds(ms: i64): i64 {
  const s = (ms + 999) / 1000;
  return s < 1 ? 1 : s;
}

export function wasmgate_init(ptr: usize, len: i32): i32 {
  const cfg = readConfig(ptr, len);
  const r = parseLimits(cfg);
  if (r.limits === null) {
    logError("rate_limiter: bad config: " + r.error);
    return 1;
  }
  baseConfig = cfg;
  baseLimits = r.limits;
  overrides.clear();
  return 0;
}

function limitsFor(req: Request): Limits {
  const base = baseLimits;
  if (base === null) throw new Error("rate_limiter: wasmgate_init was not called");
  // Keyed by the override's text as sent, so a cached one costs no parsing.
  const cacheKey = req.routeConfigText;
  if (cacheKey === null) return base;
  if (overrides.has(cacheKey)) return overrides.get(cacheKey);
  const r = parseLimits(mergeObjects(baseConfig, <Json>req.routeConfig));
  const l = r.limits;
  // A broken override must not silently fall back to looser limits: log and
  // trap, and the gateway applies the plugin's failure policy.
  if (l === null) throw new Error("rate_limiter: bad route_config for route '" + req.route + "': " + r.error);
  if (overrides.size >= MAX_CACHED_OVERRIDES) overrides.clear();
  overrides.set(cacheKey, l);
  return l;
}

/** Append the request's bucket: "h:<header value>", or the client IP. */
function appendClientKey(key: ByteBuilder, req: Request, l: Limits): void {
  if (l.header.length > 0) {
    const v = req.header(l.header);
    if (v !== null && v.length > 0) {
      key.appendString("h:").appendString(v);
      return;
    }
  }
  key.appendString(req.clientIp);
}

/**
 * Milliseconds until one more request fits, given `prev`/`curr` counts at
 * `elapsed` ms into the current window (curr already excludes the request).
 */
function msUntilAllowed(prev: i64, curr: i64, elapsed: i64, l: Limits): i64 {
  const w = <f64>l.windowMs;
  const room = <f64>(l.limit - 1); // what the estimate must fall to
  const leftInWindow = w - <f64>elapsed;
  if (<f64>curr <= room && prev > 0) {
    // Still in this window, once enough of the previous one has slid out.
    const dt = leftInWindow - (room - <f64>curr) * w / <f64>prev;
    return <i64>Math.ceil(Math.max(dt, 1.0));
  }
  // In the next window, when this window's count (then "prev") has faded.
  const dt = leftInWindow + w * (1.0 - room / <f64>curr);
  return <i64>Math.ceil(Math.max(dt, 1.0));
}

function rateLimitHeader(remaining: i64, resetSeconds: i64): string {
  return "\"default\";r=" + remaining.toString() + ";t=" + resetSeconds.toString();
}

// The counter key, rebuilt in place for each request.
const key = new ByteBuilder(128);

export function handle_request(ptr: usize, len: i32): i64 {
  const req = readRequest(ptr, len);
  const l = limitsFor(req);
  const now = nowMs();
  const w = l.windowMs;
  const index = now / w;
  const elapsed = now - index * w;
  const ttl = 2 * w;

  // rl:<route>:<key>:<window index>
  key.reset().appendString("rl:").appendString(req.route).appendString(":");
  appendClientKey(key, req, l);
  key.appendString(":");
  const prefix = key.length;
  const prev = counterGetBytes(key.appendInt(index - 1));
  key.truncate(prefix).appendInt(index);
  const curr = counterIncrBytes(key, 1, ttl);
  const weight = <f64>(w - elapsed) / <f64>w;
  const estimate = <f64>prev * weight + <f64>curr;

  if (estimate > <f64>l.limit) {
    counterIncrBytes(key, -1, ttl); // denied requests are not counted
    const retryMs = msUntilAllowed(prev, curr - 1, elapsed, l);
    const retry = ceilSeconds(retryMs);
    const a = Action.block(429, "Too Many Requests: retry in " + retry.toString() + " s\n");
    a.setHeader("retry-after", retry.toString());
    a.setHeader("ratelimit-policy", l.policy);
    a.setHeader("ratelimit", rateLimitHeader(0, retry));
    return respond(a);
  }

  const remaining = <i64>Math.floor(<f64>l.limit - estimate);
  // t: when quota comes back. With quota left, that is the end of this
  // window; with none left, when the next request would be allowed.
  const reset = remaining > 0 ? ceilSeconds(w - elapsed) : ceilSeconds(msUntilAllowed(prev, curr, elapsed, l));
  const a = Action.proceed();
  a.setResponseHeader("ratelimit-policy", l.policy);
  a.setResponseHeader("ratelimit", rateLimitHeader(remaining, reset));
  return respond(a);
}
