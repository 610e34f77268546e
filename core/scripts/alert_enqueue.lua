-- Enqueue alert deliveries, each only if its (rule, group) is not cooling down: the cooldown key and the task
-- are written together, so a crash never leaves a cooldown without its alert (nor an alert without its
-- cooldown: a re-evaluated signal finds the key and sends nothing).
-- KEYS[1] task stream; ARGV: (cooldown key, cooldown ms (0 = none), taskiq message) triples.
-- Returns the number of deliveries enqueued.
local n = 0
for i = 1, #ARGV, 3 do
  local ok = true
  if tonumber(ARGV[i + 1]) > 0 then
    ok = redis.call('SET', ARGV[i], '1', 'NX', 'PX', ARGV[i + 1])
  end
  if ok then
    redis.call('XADD', KEYS[1], '*', 'data', ARGV[i + 2])
    n = n + 1
  end
end
return n
