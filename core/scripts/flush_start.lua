-- Begin a count sync: move the pending deltas aside under a fresh batch id, atomically, so ingest keeps
-- counting into a new hash. Returns every batch not yet applied (this one and any a crash left behind).
-- KEYS[1] pending hash, KEYS[2] flushing batch set, KEYS[3] flushing key of the new batch, KEYS[4] sync
-- generation (moved with every rename: readers adding pending deltas to DB counts retry when it moved);
-- ARGV[1] batch id
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('INCR', KEYS[4])
end
return redis.call('SMEMBERS', KEYS[2])
