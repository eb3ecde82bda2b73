-- Record durable earns of whole sales: the program's rules run on every one
-- (a 5-line basket with line discounts, an excluded gift card, a custom amount,
-- a loyalty tender and three promotions), and the sale is stored for refunds.
local token = os.getenv("BENCH_TOKEN")
local count = tonumber(os.getenv("BENCH_CUSTOMERS"))
local run = os.getenv("BENCH_RUN")
local threads = {}
local counter = 0
local id = 0

local lines = '[{"line_id":"l0","sku":"latte","category":"drink","quantity":3,"unit_price":450,"tax":60},'
  .. '{"line_id":"l1","sku":"croissant","category":"pastry","quantity":2,"unit_price":300,"line_discount":50,"tax":30},'
  .. '{"line_id":"l2","sku":"mug","quantity":1,"unit_price":1500,"tax":200},'
  .. '{"line_id":"l3","sku":"gift-card","quantity":1,"unit_price":2500},'
  .. '{"line_id":"l4","sku":"shipping","quantity":1,"unit_price":800}]'
local tenders = '[{"kind":"loyalty","amount":500},{"kind":"card","amount":6290,"card_token":"tok_bench"}]'

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
  local body = string.format(
    '{"customer_id":"%s","sale":{"sale_id":"%s","state":"paid","sale_discount":200,"lines":%s,"tenders":%s}}',
    customer, sale, lines, tenders)
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
