-- An AUTH attempt counted against its client and user name (mailflow/smtpd/guessing.py).
-- : Count the attempt for every key unless one is locked out already: one atomic step, so
-- : that forty connections at once cannot all be let through before any has failed.
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local counts = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  if n >= limit then return {i, n} end
  counts[i] = n + 1
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('EXPIRE', key, math.ceil(window) + 1)
end
table.insert(counts, 1, 0)
return counts
