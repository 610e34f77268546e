-- Add one triage signal to the capped signal stream, once per transition whoever sends it how often.
-- KEYS[1] signal stream, KEYS[2] "sent" marker of this transition; ARGV[1] marker TTL s, ARGV[2] stream cap,
-- then field, value, ... of the entry. Returns 1 if added, 0 if this transition was signalled before.
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) == false then
  return 0
end
local entry = {}
for i = 3, #ARGV do entry[#entry + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(entry))
return 1
