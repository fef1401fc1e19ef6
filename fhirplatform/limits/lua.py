"""Lua run inside Redis: the whole admission decision is one EVALSHA.

Time comes from Redis TIME so every worker shares one clock. Rate buckets are
GCRA: the key holds the theoretical arrival time (TAT) of the bucket, in seconds.
In-flight slots are leases: a ZSET member per admitted request, named by a lease id
(fresh per admission, not the X-Request-ID) and scored by when the lease expires.

A finished request's release is not sent on its own: the process folds it into its next
admission (RELEASES_APPLY runs first in ADMIT), or its flusher sends what an idle process
still holds with RELEASE. Both scripts also return the caller generation (a counter the
token cache checks its entries against), so reading it costs no round trip of its own.
"""

# Applies the releases folded into a call, in the order they were queued.
# ARGV from index `a`: the number of releases, then per release (lease id, bad, #slot keys);
# their slot keys are the KEYS from index `k`. KEYS[2] is the global in-flight ZSET, KEYS[3]
# the adaptive HASH. AIMD: a bad outcome (slow, or a server error) cuts the limit by 10% at
# most once a second; each good one adds 1/limit, so the limit grows by about one per
# "limit" good requests. Returns the adaptive limit afterwards (nil when there were none).
RELEASES_APPLY = r"""
local function releases_apply(a, k, now, amin, amax)
  local n = tonumber(ARGV[a])
  if n == 0 then return nil end
  a = a + 1
  local limit = tonumber(redis.call('HGET', KEYS[3], 'limit') or amax)
  local cut_at = nil
  for i = 1, n do
    local lease_id, bad, nkeys = ARGV[a], ARGV[a + 1] == '1', tonumber(ARGV[a + 2])
    a = a + 3
    for j = 1, nkeys do
      redis.call('ZREM', KEYS[k], lease_id)
      k = k + 1
    end
    redis.call('ZREM', KEYS[2], lease_id)
    if bad then
      cut_at = cut_at or tonumber(redis.call('HGET', KEYS[3], 'cut_at') or '0')
      if now - cut_at >= 1 then
        limit = math.max(amin, limit * 0.9)
        cut_at = now
        redis.call('HSET', KEYS[3], 'cut_at', tostring(now))
      end
    else
      limit = math.min(amax, limit + 1 / limit)
    end
  end
  redis.call('HSET', KEYS[3], 'limit', tostring(limit))
  return limit
end
"""

# KEYS: config-version, global in-flight ZSET, adaptive HASH, caller generation, then the
#       rate buckets, the daily counters and the in-flight slot ZSETs, in that order, then
#       the slot keys of the folded releases.
# ARGV: lease id, cost, lease seconds, overload share, #buckets, #dailies, #slots,
#       overload dry (0/1), adaptive min, adaptive max, then per bucket
#       (interval, depth, dry), per daily (quota, expire-at, dry), per slot (cap, dry),
#       then the folded releases (see RELEASES_APPLY).
# Returns: config version, admitted (0/1), adaptive limit x1000, global in-flight,
#          caller generation, then per item (ok, remaining, reset ms, retry ms); the
#          overload item last.
ADMIT = (
    RELEASES_APPLY
    + r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease_id = ARGV[1]
local cost = tonumber(ARGV[2])
local lease_seconds = tonumber(ARGV[3])
local share = tonumber(ARGV[4])
local nb, nd, nc = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local overload_dry = ARGV[8] == '1'
local amin, amax = tonumber(ARGV[9]), tonumber(ARGV[10])
local a, k = 11, 5
local out = {}
-- Slots freed by finished requests are free before this request counts them.
releases_apply(a + 3 * nb + 3 * nd + 2 * nc, k + nb + nd + nc, now, amin, amax)
local blocked = false
local writes = {}

for i = 1, nb do
  local interval, depth = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local dry = ARGV[a + 2] == '1'
  a = a + 3
  local stored = tonumber(redis.call('GET', KEYS[k]) or '0')
  local tat = math.max(stored, now)
  local new_tat = tat + cost * interval
  local allow_at = new_tat - depth * interval
  -- A request costing more than the whole depth still passes into a full bucket.
  local ok = allow_at <= now or stored <= now
  if ok then
    local remaining = math.floor((depth * interval - (new_tat - now)) / interval + 1e-9)
    table.insert(out, 1); table.insert(out, math.max(remaining, 0))
    table.insert(out, math.ceil((new_tat - now) * 1000)); table.insert(out, 0)
    table.insert(writes, {'tat', KEYS[k], new_tat, math.ceil((new_tat - now) * 1000) + 1000})
  else
    local remaining = math.floor((depth * interval - (tat - now)) / interval + 1e-9)
    table.insert(out, 0); table.insert(out, math.max(remaining, 0))
    table.insert(out, math.ceil((tat - now) * 1000))
    table.insert(out, math.ceil((allow_at - now) * 1000))
    if not dry then blocked = true end
  end
  k = k + 1
end

for i = 1, nd do
  local quota, expire_at = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local dry = ARGV[a + 2] == '1'
  a = a + 3
  local used = tonumber(redis.call('GET', KEYS[k]) or '0')
  local reset_ms = math.ceil((expire_at - now) * 1000)
  if used + cost <= quota then
    table.insert(out, 1); table.insert(out, quota - used - cost)
    table.insert(out, reset_ms); table.insert(out, 0)
    table.insert(writes, {'daily', KEYS[k], expire_at})
  else
    table.insert(out, 0); table.insert(out, math.max(quota - used, 0))
    table.insert(out, reset_ms); table.insert(out, reset_ms)
    if not dry then blocked = true end
  end
  k = k + 1
end

for i = 1, nc do
  local cap = tonumber(ARGV[a])
  local dry = ARGV[a + 1] == '1'
  a = a + 2
  -- Expired leases belong to crashed or stuck workers: reap them before counting.
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  local n = redis.call('ZCARD', KEYS[k])
  if n < cap then
    table.insert(out, 1); table.insert(out, cap - n - 1)
    table.insert(out, 0); table.insert(out, 0)
    table.insert(writes, {'slot', KEYS[k]})
  else
    table.insert(out, 0); table.insert(out, 0)
    table.insert(out, 1000); table.insert(out, 1000)
    if not dry then blocked = true end
  end
  k = k + 1
end

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[2])
local limit = tonumber(redis.call('HGET', KEYS[3], 'limit') or amax)
local allowed_inflight = math.max(1, math.floor(limit * share))
if inflight < allowed_inflight then
  table.insert(out, 1); table.insert(out, allowed_inflight - inflight - 1)
  table.insert(out, 0); table.insert(out, 0)
else
  table.insert(out, 0); table.insert(out, 0)
  table.insert(out, 1000); table.insert(out, 1000)
  if not overload_dry then blocked = true end
end

if not blocked then
  for _, w in ipairs(writes) do
    if w[1] == 'tat' then
      redis.call('SET', w[2], tostring(w[3]), 'PX', w[4])
    elseif w[1] == 'daily' then
      redis.call('INCRBY', w[2], cost)
      redis.call('EXPIREAT', w[2], math.ceil(w[3]) + 3600)
    else
      redis.call('ZADD', w[2], now + lease_seconds, lease_id)
      redis.call('EXPIRE', w[2], math.ceil(lease_seconds) * 2)
    end
  end
  redis.call('ZADD', KEYS[2], now + lease_seconds, lease_id)
  redis.call('EXPIRE', KEYS[2], math.ceil(lease_seconds) * 2)
end

local version = tonumber(redis.call('GET', KEYS[1]) or '0')
local generation = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
local head = {version, blocked and 0 or 1, math.floor(limit * 1000), inflight, generation}
for _, v in ipairs(out) do table.insert(head, v) end
return head
"""
)

# KEYS: config-version, global in-flight ZSET, adaptive HASH, caller generation, then the
#       slot keys of the releases.
# ARGV: adaptive min, adaptive max, then the releases (see RELEASES_APPLY).
# Returns: config version, adaptive limit x1000, caller generation.
RELEASE = (
    RELEASES_APPLY
    + r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local amin, amax = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit = releases_apply(3, 5, now, amin, amax)
  or tonumber(redis.call('HGET', KEYS[3], 'limit') or amax)
local version = tonumber(redis.call('GET', KEYS[1]) or '0')
local generation = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
return {version, math.floor(limit * 1000), generation}
"""
)
