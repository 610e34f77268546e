-- The coalescer lease: ARGV[1] holder name, ARGV[2] lease ms, ARGV[3] 'hold' or 'release'.
-- hold: take the free lease or extend our own (1), or report it held by someone else (0).
-- release: drop it only if it is ours, so a slow ex-holder never frees its successor's lease.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
  return 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return 1 end
return 0
