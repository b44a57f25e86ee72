-- wrk script for benchmarks/peers/run.py: POSTs the JSON bodies named after `--` in turn
-- (each request prepared once, in init) and prints one JSON line from done(): requests,
-- duration, wrk's error counts and the latency percentiles, in microseconds.
local prepared = {}
local counter = 0

function init(args)
  for _, path in ipairs(args) do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    prepared[#prepared + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
  end
end

function request()
  counter = counter + 1
  return prepared[(counter - 1) % #prepared + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
