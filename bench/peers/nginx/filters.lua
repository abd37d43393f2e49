-- The two bundled wasmgate filters, done the nginx way in access_by_lua:
-- a sliding-window rate limit on a lua_shared_dict (the same estimate as
-- plugins/rate_limiter: prev * (window - elapsed) / window + curr, denied
-- requests un-counted) and redaction of authorization / cookie / x-api-key.
-- Limits come from nginx variables set in the generated config.
local limits = ngx.shared.ratelimit
local limit = tonumber(ngx.var.rl_limit)
local window_ms = tonumber(ngx.var.rl_window_ms)
local REDACT = { "authorization", "cookie", "x-api-key" }
local VARS = { "http_authorization", "http_cookie", "http_x_api_key" }

local now = ngx.now() * 1000
local index = math.floor(now / window_ms)
local elapsed = now - index * window_ms
local prefix = "rl:" .. ngx.var.remote_addr .. ":"
local ttl = 2 * window_ms / 1000

local prev = limits:get(prefix .. (index - 1)) or 0
local curr_key = prefix .. index
local curr, err = limits:incr(curr_key, 1, 0, ttl)
if not curr then
    ngx.log(ngx.ERR, "rate limit counter: ", err)
    return ngx.exit(500)
end
local estimate = prev * (window_ms - elapsed) / window_ms + curr
local policy = '"default";q=' .. limit .. ';w=' .. math.ceil(window_ms / 1000)
if estimate > limit then
    limits:incr(curr_key, -1)
    local retry = math.max(1, math.ceil((window_ms - elapsed) / 1000))
    ngx.header["Retry-After"] = retry
    ngx.header["RateLimit-Policy"] = policy
    ngx.header["RateLimit"] = '"default";r=0;t=' .. retry
    ngx.status = 429
    ngx.print("Too Many Requests: retry in ", retry, " s\n")
    return ngx.exit(ngx.HTTP_OK)
end
ngx.ctx.ratelimit_policy = policy
ngx.ctx.ratelimit = '"default";r=' .. math.floor(limit - estimate)
    .. ';t=' .. math.max(1, math.ceil((window_ms - elapsed) / 1000))

for i = 1, #REDACT do
    if ngx.var[VARS[i]] ~= nil then
        ngx.req.set_header(REDACT[i], "REDACTED")
    end
end
