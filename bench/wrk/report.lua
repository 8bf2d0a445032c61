-- wrk script for bench/run.sh: POSTs the file named by WRK_BODY_FILE when it is set (GET
-- otherwise), and prints one line `WRK_JSON {...}` with the exact figures of the run.
local body_file = os.getenv("WRK_BODY_FILE")
if body_file and body_file ~= "" then
   local file = assert(io.open(body_file, "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
      '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeout_errors":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean))
end
