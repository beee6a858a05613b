-- The workloads of bench/workloads/*.avap in Lua (issue 8); the same file runs in Lua 5.4 and
-- LuaJIT. Each workload is a function, timed in this process: one warm-up call, then samples
-- until both the minimum count and the time budget are reached (the same rule as
-- examples/bench_avap.rs); a sample times a batch of calls sized to last at least a millisecond.
-- The clock is os.clock (process CPU time, microsecond resolution): plain Lua has no
-- high-resolution wall clock. Prints, per workload:
--
--     RESULT <impl> <workload> <result> <median seconds> <samples>
--
-- Usage: lua5.4 bench/peers/workloads.lua IMPL [--quick] [--only NAME]   (IMPL: lua54 or luajit)
-- Lua 5.4 computes in 64-bit integers; LuaJIT in doubles, exact for these values.

local impl = arg[1] or "lua"
-- bench/workloads/expected.txt: NAME RESULT per line, # comments; every result is checked
-- against it before its workload is timed.
local expected_file = (arg[0]:match("^(.*)/") or ".") .. "/../workloads/expected.txt"
local expected = {}
for line in assert(io.open(expected_file)):lines() do
  local name, result = line:match("^([%w_]+) (.+)$")
  if name and line:sub(1, 1) ~= "#" then expected[name] = result end
end
local quick, only = false, nil
for i = 2, #arg do
  if arg[i] == "--quick" then quick = true end
  if arg[i] == "--only" then only = arg[i + 1] end
end

local function loop_arith()
  local r = 0
  for i = 1, 10000000 do
    r = r + i * i % 7
  end
  return r
end

local function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end

local function fib_rec()
  return fib(27)
end

local function string_build()
  local s = ""
  for _ = 1, 100000 do
    s = s .. "x"
  end
  return #s
end

-- Plain Lua has no JSON library: a compact encoder for the values json_build makes (integers,
-- strings without escapes, arrays, objects with their keys sorted, as the other
-- implementations order them).
local encode
local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end
encode = function(v, out)
  local t = type(v)
  if t == "number" then
    out[#out + 1] = string.format("%d", v)
  elseif t == "string" then
    out[#out + 1] = encode_string(v)
  elseif t == "table" and v[1] ~= nil then
    out[#out + 1] = "["
    for i = 1, #v do
      if i > 1 then out[#out + 1] = "," end
      encode(v[i], out)
    end
    out[#out + 1] = "]"
  else
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = encode_string(k)
      out[#out + 1] = ":"
      encode(v[k], out)
    end
    out[#out + 1] = "}"
  end
end

local function json_build()
  local rows = {}
  for i = 1, 10000 do
    rows[#rows + 1] = { id = i, name = "user" .. string.format("%d", i), score = i * 7 % 100 }
  end
  local out = {}
  encode(rows, out)
  return #table.concat(out)
end

-- A script loaded once and run per call: the per-run overhead.
local hello_chunk = assert(load('local r = "Hello"\nreturn { r = r }\n'))
local function hello()
  return hello_chunk().r
end

local workloads = {
  { "loop_arith", loop_arith },
  { "fib_rec", fib_rec },
  { "string_build", string_build },
  { "json_build", json_build },
  { "hello", hello },
}

local function median(work)
  local budget, min_samples, max_samples = 2.0, 5, 1000
  if quick then budget, min_samples, max_samples = 0.3, 3, 200 end
  work()
  local batch = 1
  while true do
    local start = os.clock()
    for _ = 1, batch do work() end
    if os.clock() - start >= 1e-3 or batch >= 1048576 then break end
    batch = batch * 2
  end
  local samples = {}
  local started = os.clock()
  while #samples < max_samples and (#samples < min_samples or os.clock() - started < budget) do
    local start = os.clock()
    for _ = 1, batch do work() end
    samples[#samples + 1] = (os.clock() - start) / batch
  end
  table.sort(samples)
  return samples[math.floor(#samples / 2) + 1], #samples
end

for _, w in ipairs(workloads) do
  local name, work = w[1], w[2]
  if only == nil or only == name then
    local result = work()
    if type(result) == "number" then result = string.format("%d", result) end
    if result ~= expected[name] then
      io.stderr:write(string.format("%s %s: result %s, expected %s (%s)\n", impl, name, result,
        tostring(expected[name]), expected_file))
      os.exit(1)
    end
    local seconds, samples = median(work)
    io.write(string.format("RESULT %s %s %s %.9f %d\n", impl, name, result, seconds, samples))
    io.flush()
  end
end
