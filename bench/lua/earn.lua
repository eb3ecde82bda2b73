-- Record durable earns: unique sale ids and idempotency keys per thread.
local token = os.getenv("BENCH_TOKEN")
local count = tonumber(os.getenv("BENCH_CUSTOMERS"))
local run = os.getenv("BENCH_RUN")
local threads = {}
local counter = 0
local id = 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + id)
end

function request()
  counter = counter + 1
  local sale = string.format("%s-%d-%d", run, id, counter)
  local customer = string.format("00000000-0000-7000-8000-%012d", math.random(0, count - 1))
  local body = string.format('{"customer_id":"%s","sale_id":"%s","amount":%d,"state":"paid"}',
                             customer, sale, math.random(100, 100000))
  return wrk.format("POST", "/v1/earns", {
    ["Authorization"] = "Bearer " .. token,
    ["Idempotency-Key"] = sale,
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors_status": %d, "errors_other": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
