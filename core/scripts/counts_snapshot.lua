-- Read what Redis holds of some groups' counts that the DB does not have yet, in one atomic snapshot.
-- KEYS[1] pending hash, KEYS[2] flushing batch set, KEYS[3] sync generation; ARGV = fingerprints.
-- Returns {generation, pending values..., then per flushing batch: batch id, values...}.
-- The generation moves whenever a sync renames the pending hash aside (flush_start.lua), so a reader can
-- tell whether pending deltas it saw may have reached the DB since (core/counts.py).
local out = {redis.call('GET', KEYS[3]) or '0'}
local n = #ARGV
if n == 0 then return out end
local pending = redis.call('HMGET', KEYS[1], unpack(ARGV))
for i = 1, n do out[#out + 1] = pending[i] or '0' end
-- a batch's hash is the batch set's name + ':' + batch id (Keys.flushing): same hash tag, same slot
local prefix = KEYS[2] .. ':'
for _, bid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  out[#out + 1] = bid
  local vals = redis.call('HMGET', prefix .. bid, unpack(ARGV))
  for i = 1, n do out[#out + 1] = vals[i] or '0' end
end
return out
