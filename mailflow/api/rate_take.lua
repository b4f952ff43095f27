-- One API request's messages against its key's rate, all of them or none, across every
-- submission process and host that shares this Redis (mailflow/api/ratelimit.py).
-- KEYS[1]: the key's sorted set; members "<token>:<messages>", scored by their time (ms).
-- ARGV: now (ms), window (ms), messages wanted, messages allowed per window, a fresh token.
-- Returns 0 when taken, else the milliseconds to wait until they fit.
local key = KEYS[1]
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local wanted, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if wanted > limit then
  return window
end
local taken = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local used = 0
for i = 1, #taken, 2 do
  used = used + tonumber(string.match(taken[i], ':(%d+)$'))
end
if used + wanted <= limit then
  redis.call('ZADD', key, now, ARGV[5] .. ':' .. wanted)
  redis.call('PEXPIRE', key, window)
  return 0
end
local freed, over = 0, used + wanted - limit
for i = 1, #taken, 2 do
  freed = freed + tonumber(string.match(taken[i], ':(%d+)$'))
  if freed >= over then
    return math.max(1, tonumber(taken[i + 1]) + window - now)
  end
end
return window
