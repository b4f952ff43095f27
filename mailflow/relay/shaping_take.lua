-- Rate places under shaping rules, for every host at once (mailflow/relay/shaping.py).
-- ARGV: now ms, id, credit ms, then per rule max_conns, per_minute, per_hour; last: places
-- wanted.  Returns {granted, wait ms}: some places (each a window member scored now +
-- credit), or none and the wait.
local now, id, credit, wanted = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[#ARGV])
local wait, granted = 0, wanted
for i = 0, #KEYS / 4 - 1 do
  local minute, hour, susp = KEYS[i * 4 + 2], KEYS[i * 4 + 3], KEYS[i * 4 + 4]
  local until_ = tonumber(redis.call('GET', susp) or '0')
  if until_ > now then wait = math.max(wait, until_ - now) end
  for j, spec in ipairs({{minute, 60000, tonumber(ARGV[4 + i * 3 + 1])},
                         {hour, 3600000, tonumber(ARGV[4 + i * 3 + 2])}}) do
    local key, span, max = spec[1], spec[2], spec[3]
    if max > 0 then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
      local room = max - redis.call('ZCARD', key)
      if room <= 0 then
        local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
        wait = math.max(wait, tonumber(oldest[2]) + span - now + 1)
      else
        granted = math.min(granted, room)
      end
    end
  end
end
if wait > 0 then return {0, wait} end
for i = 0, #KEYS / 4 - 1 do
  for j, spec in ipairs({{KEYS[i * 4 + 2], 60000, tonumber(ARGV[4 + i * 3 + 1])},
                         {KEYS[i * 4 + 3], 3600000, tonumber(ARGV[4 + i * 3 + 2])}}) do
    if spec[3] > 0 then
      for n = 1, granted do redis.call('ZADD', spec[1], now + credit, id .. ':' .. n) end
      redis.call('PEXPIRE', spec[1], spec[2] * 2 + credit)
    end
  end
end
return {granted, 0}
