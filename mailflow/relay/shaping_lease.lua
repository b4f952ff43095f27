-- A connection's place under shaping rules, for every host at once (mailflow/relay/shaping.py).
-- KEYS: per rule 4 keys (conns, minute, hour, suspended); ARGV: now ms, lease id, ttl ms,
-- then per rule max_conns, per_minute, per_hour (0 = none). Returns wait in ms (0 = granted).
local now, id, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local wait = 0
for i = 0, #KEYS / 4 - 1 do
  local conns, susp = KEYS[i * 4 + 1], KEYS[i * 4 + 4]
  local until_ = tonumber(redis.call('GET', susp) or '0')
  if until_ > now then wait = math.max(wait, until_ - now) end
  local max = tonumber(ARGV[4 + i * 3])
  if max > 0 then
    redis.call('ZREMRANGEBYSCORE', conns, '-inf', now)
    if not redis.call('ZSCORE', conns, id) and redis.call('ZCARD', conns) >= max then
      wait = math.max(wait, tonumber(ARGV[#ARGV]))
    end
  end
end
if wait > 0 then return wait end
for i = 0, #KEYS / 4 - 1 do
  if tonumber(ARGV[4 + i * 3]) > 0 then
    redis.call('ZADD', KEYS[i * 4 + 1], now + ttl, id)
    redis.call('PEXPIRE', KEYS[i * 4 + 1], ttl * 2)
  end
end
return 0
