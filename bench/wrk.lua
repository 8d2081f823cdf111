-- One wrk script for every scenario of scripts/bench; configured by environment:
--   BENCH_KIND   refresh | verify | hello
--   BENCH_IDS    file of "index client_id connection_id" lines (scripts/bench writes it)
--   BENCH_LO, BENCH_HI  the range of indexes to use (inclusive)
--   BENCH_MODE   random | sequential (every index in turn, split across threads)
--   BENCH_RID    x-request-id prefix (P5 finds its events by it)
--   BENCH_DELAY  milliseconds between requests of one connection (0: closed loop)
--   BENCH_OUT    where done() writes its JSON summary
--   BENCH_IDEMPOTENCY  refreshes only: `unique` (a new Idempotency-Key per request: each
--                rotates and remembers its answer) or `per-connection` (one key per
--                connection: its first request rotates, every later one is a replay)
-- Tokens and secrets are derived from the index the way scripts/bench seeds them.
local kind = os.getenv("BENCH_KIND") or "refresh"
local lo = tonumber(os.getenv("BENCH_LO") or "1")
local hi = tonumber(os.getenv("BENCH_HI") or "1")
local mode = os.getenv("BENCH_MODE") or "random"
local rid = os.getenv("BENCH_RID") or "bench"
local delay_ms = tonumber(os.getenv("BENCH_DELAY") or "0")
local idempotency = os.getenv("BENCH_IDEMPOTENCY")

local threads = {}
local counter = 1

function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local clients, conns = {}, {}
local seq, step, n, started = 0, 1, 0, 0
-- Globals, so that done() can read each thread's counts with thread:get().
status5, status4, status2 = 0, 0, 0

function init(args)
  -- BENCH_THREADS must equal wrk's -t: sequential mode strides by it.
  step = tonumber(os.getenv("BENCH_THREADS") or "2")
  seq = lo + (tid - 1)
  math.randomseed(os.time() + tid * 7919)
  if kind == "refresh" then
    local f = assert(io.open(os.getenv("BENCH_IDS"), "r"))
    for line in f:lines() do
      local i, c, k = line:match("^(%d+)%s+(%S+)%s+(%S+)")
      i = tonumber(i)
      if i >= lo and i <= hi then
        clients[i] = c
        conns[i] = k
      end
    end
    f:close()
  end
end

local function next_index()
  if mode == "sequential" then
    local i = seq
    seq = seq + step
    if seq > hi then seq = lo + (tid - 1) end
    return i
  end
  return math.random(lo, hi)
end

function request()
  n = n + 1
  if kind == "hello" then
    return wrk.format("POST", "/", {}, "")
  end
  local i = next_index()
  if kind == "verify" then
    return wrk.format("POST", "/api/connections/actions/verify",
      { ["api-key"] = "bench-secret-" .. i }, "")
  end
  local path = "/api/clients/" .. clients[i] .. "/connections/" .. conns[i] .. "/actions/refresh_secret"
  local headers = {
    ["Authorization"] = "Bearer bench-token-" .. i,
    ["x-request-id"] = rid .. "-" .. tid .. "-" .. n,
  }
  if idempotency == "unique" then
    headers["Idempotency-Key"] = '"bench-key-' .. rid .. "-" .. tid .. "-" .. n .. '"'
  elseif idempotency == "per-connection" then
    headers["Idempotency-Key"] = '"bench-replay-key-' .. i .. '"'
  end
  return wrk.format("PATCH", path, headers, "")
end

function delay()
  if delay_ms <= 0 then return 0 end
  started = started + 1
  -- Spread the connections' first requests over one period, so an open-loop rate is
  -- steady rather than one burst per period.
  if started <= 1000 then return math.random(0, delay_ms) end
  return delay_ms
end

function response(status, headers, body)
  if status >= 500 then status5 = status5 + 1
  elseif status >= 400 then status4 = status4 + 1
  elseif status >= 200 and status < 300 then status2 = status2 + 1 end
end

function done(summary, latency, requests)
  local s5, s4, s2 = 0, 0, 0
  for _, t in ipairs(threads) do
    s5 = s5 + (t:get("status5") or 0)
    s4 = s4 + (t:get("status4") or 0)
    s2 = s2 + (t:get("status2") or 0)
  end
  local e = summary.errors
  local out = string.format(
    '{"requests": %d, "duration_us": %d, "ok": %d, "status4xx": %d, "status5xx": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}',
    summary.requests, summary.duration, s2, s4, s5,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean)
  local path = os.getenv("BENCH_OUT")
  if path then
    local f = assert(io.open(path, "w"))
    f:write(out, "\n")
    f:close()
  end
  print(out)
end
