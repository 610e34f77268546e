-- Begin a count sync: move the pending deltas aside under a fresh batch id, atomically, so ingest keeps
-- counting into a new hash. Returns every batch not yet applied (this one and any a crash left behind).
-- KEYS[1] pending hash, KEYS[2] flushing batch set, KEYS[3] flushing key of the new batch, KEYS[4] sync
-- generation (moved with every rename: readers adding pending deltas to DB counts retry when it moved);
-- ARGV[1] batch id
-- Safe to run twice with one batch id: redis-py sends a call again when its connection dropped before the
-- reply (a failover closing connections, a socket timeout), after the first run may have happened. That run
-- put the id in the batch set; the pending hash now holds only what ingest counted since, and RENAMEing it
-- over the batch would drop the first run's deltas (issue 12: a CLUSTER FAILOVER lost 5 and once 56 counts).
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('INCR', KEYS[4])
end
return redis.call('SMEMBERS', KEYS[2])
