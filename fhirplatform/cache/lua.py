"""Lua run inside Redis: a lookup is one EVALSHA, a fill is one EVALSHA.

Time comes from Redis TIME so every process shares one clock. An entry is a HASH:
p (payload bytes), at (stored-at, epoch seconds), ttl, swr, and g: the generation keys
it was filled under and their tokens then, as a JSON list [key1, token1, key2, ...].
It is reachable only while every one of those keys still holds that token.

A generation key that is missing is created when read, with a fresh token made from the
random base the caller passes (ARGV) and the key's position: tokens are never counters,
so a Redis that restarted empty can never hand out a token an entry or an in-process
snapshot already holds. (Entry dependencies are read by name from inside the script:
standalone Redis, not Redis Cluster.)
"""

# Returns the token of KEYS[i], setting a fresh one (base .. '.' .. i) when it is missing.
_READ_OR_CREATE = r"""
local function token_of(i, base, ttl)
  local token = redis.call('GET', KEYS[i])
  if not token then
    token = base .. '.' .. i
    redis.call('SET', KEYS[i], token, 'EX', ttl)
  end
  return token
end
"""

# Whether every generation key an entry names still holds the entry's token.
_CURRENT = r"""
local function current(deps_json)
  local deps = cjson.decode(deps_json)
  for j = 1, #deps, 2 do
    if redis.call('GET', deps[j]) ~= deps[j + 1] then return false end
  end
  return true
end
"""

# KEYS: the generation keys.  ARGV: token base, generation ttl.
# Returns their tokens, in order.
GENERATIONS_READ = (
    _READ_OR_CREATE
    + r"""
local out = {}
for i = 1, #KEYS do
  out[i] = token_of(i, ARGV[1], ARGV[2])
end
return out
"""
)

# KEYS: entry, stats hash, key index, refresh lock, then the tenant generation keys whose
#       tokens are returned.
# ARGV: token base, generation ttl, refresh lock seconds, bypasses this process counted
#       while Redis was unreachable (folded into the stats here: no round trip of their own),
#       the prefix of the entry's tier in the counters ('' response, 'semantic_').
# Returns: outcome, payload, stored-at, age in ms, the entry's ttl (seconds), then the
#   tokens of the generation keys.
#   outcome: hit | stale (past ttl, within swr: served while another refreshes) |
#            refresh (past ttl, within swr: this caller took the lock and refreshes) |
#            miss (none, expired, or filled under a generation that changed since).
LOOKUP = (
    _READ_OR_CREATE
    + _CURRENT
    + r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local outcome, payload, at, age_ms, ttl_out = 'miss', '', '0', 0, '0'
local e = redis.call('HMGET', KEYS[1], 'p', 'at', 'ttl', 'swr', 'g')
if e[1] then
  if current(e[5]) then
    local age = now - tonumber(e[2])
    local ttl, swr = tonumber(e[3]), tonumber(e[4])
    if age < ttl then
      outcome = 'hit'
    elseif age < ttl + swr then
      if redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[3]) then
        outcome = 'refresh'
      else
        outcome = 'stale'
      end
    end
    if outcome == 'hit' or outcome == 'stale' then
      payload, at, age_ms, ttl_out = e[1], e[2], math.floor(age * 1000), e[3]
    end
  else
    -- Unreachable for good: gone now rather than at the purge.
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[3], KEYS[1])
  end
end
if outcome == 'hit' or outcome == 'stale' then
  redis.call('HINCRBY', KEYS[2], ARGV[5] .. 'hits', 1)
else
  redis.call('HINCRBY', KEYS[2], ARGV[5] .. 'misses', 1)
end
local folded = tonumber(ARGV[4])
if folded > 0 then redis.call('HINCRBY', KEYS[2], 'bypasses', folded) end
local out = {outcome, payload, at, tostring(age_ms), ttl_out}
for i = 5, #KEYS do
  table.insert(out, token_of(i, ARGV[1], ARGV[2]))
end
return out
"""
)

# KEYS: entry, stats hash, key index, refresh lock, epoch, then the generation keys the
#       entry depends on.
# ARGV: the epoch token the lookup saw, payload, ttl, swr, token base, generation ttl, the
#       prefix of the entry's tier in the counters (as LOOKUP's).
# Returns 1 when stored; 0 when the epoch changed since the lookup (a change committed
# while the answer was read, so the answer may predate tokens read now): nothing stored.
FILL = (
    _READ_OR_CREATE
    + r"""
if redis.call('GET', KEYS[5]) ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[2], ARGV[7] .. 'fills_skipped', 1)
  redis.call('DEL', KEYS[4])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl, swr = tonumber(ARGV[3]), tonumber(ARGV[4])
local deps = {}
for i = 6, #KEYS do
  table.insert(deps, KEYS[i])
  table.insert(deps, token_of(i, ARGV[5], ARGV[6]))
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'p', ARGV[2], 'at', tostring(now), 'ttl', ARGV[3],
  'swr', ARGV[4], 'g', cjson.encode(deps))
redis.call('EXPIRE', KEYS[1], ttl + swr)
redis.call('ZADD', KEYS[3], now + ttl + swr, KEYS[1])
redis.call('DEL', KEYS[4])
redis.call('HINCRBY', KEYS[2], ARGV[7] .. 'fills', 1)
return 1
"""
)

# KEYS: the key index, then entry keys taken from it.
# Deletes the entries whose generations changed, and drops from the index every key whose
# entry is gone (expired, or deleted here). Returns how many keys left the index.
PURGE_BATCH = (
    _CURRENT
    + r"""
local removed = 0
for i = 2, #KEYS do
  local deps = redis.call('HGET', KEYS[i], 'g')
  local dead = not deps
  if deps and not current(deps) then
    redis.call('DEL', KEYS[i])
    dead = true
  end
  if dead then
    redis.call('ZREM', KEYS[1], KEYS[i])
    removed = removed + 1
  end
end
return removed
"""
)
