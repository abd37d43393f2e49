-- wrk script for bench/run. Every request carries the three headers the
-- redacting filters act on. Environment:
--   WRK_BODY_BYTES=N      POST a body of N bytes instead of GET
--   WRK_CONNECTION_CLOSE=1  ask for a new connection per request
-- done() prints one line "WRK_JSON {...}" (latencies in microseconds) for
-- bench/run to parse.
wrk.headers["Authorization"] = "Bearer bench-secret-token"
wrk.headers["Cookie"] = "session=bench; theme=dark"
wrk.headers["X-Api-Key"] = "bench-api-key"
wrk.headers["User-Agent"] = "wasmgate-bench/1 (wrk)"

local body_bytes = tonumber(os.getenv("WRK_BODY_BYTES") or "0") or 0
if body_bytes > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("b", body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
if os.getenv("WRK_CONNECTION_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

local function int(x)
  return string.format("%d", math.floor(tonumber(x) or 0))
end

function done(summary, latency, requests)
  local e = summary.errors
  local fields = {
    '"requests":' .. int(summary.requests),
    '"duration_us":' .. int(summary.duration),
    '"bytes":' .. int(summary.bytes),
    '"connect_errors":' .. int(e.connect),
    '"read_errors":' .. int(e.read),
    '"write_errors":' .. int(e.write),
    '"status_errors":' .. int(e.status),
    '"timeouts":' .. int(e.timeout),
    '"p50_us":' .. int(latency:percentile(50)),
    '"p90_us":' .. int(latency:percentile(90)),
    '"p99_us":' .. int(latency:percentile(99)),
    '"max_us":' .. int(latency.max),
    '"mean_us":' .. int(latency.mean),
  }
  io.write("WRK_JSON {" .. table.concat(fields, ",") .. "}\n")
end
