"""The protocol's atomic steps, as Lua run by Redis (EVALSHA; redis-py reloads them after a
restart). Every key a script touches is passed in KEYS, all under one ``{login id}`` hash tag.

Times come from Redis ``TIME``, never from a member's clock: a quarantine or a TTL must mean
the same on a machine whose clock is off by minutes.

Claim values: ``<agent>|<fence>|<redis ms>``, ``...|lost`` once the holder has marked its
answer lost (the token may be spent: nobody sends it, everyone needs a re-login), and
``<agent>|<fence>|0|reseed`` when restored from a member's gossip after Redis lost its data
(keeping the original holder, so that it can still release a token it never sent).

Epoch: ``<24 hex>:<redis ms of creation>``, with ``:g`` for the genesis epoch that
``cluster init`` creates (a new login's keyspace can hold nobody's claims, so no quarantine).
"""

from __future__ import annotations

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms_text(ms) return string.format('%d', ms) end
"""

# KEYS epoch; ARGV random hex, 'g' for genesis. Returns {epoch, created 0|1}.
ENSURE_EPOCH = _PRELUDE + """
local ep = redis.call('GET', KEYS[1])
if ep then return {ep, 0} end
ep = ARGV[1] .. ':' .. ms_text(now_ms())
if ARGV[2] == 'g' then ep = ep .. ':g' end
redis.call('SET', KEYS[1], ep)
return {ep, 1}
"""

# KEYS epoch; ARGV old epoch, random hex. A CAS: only the epoch that was seen is replaced.
ROTATE_EPOCH = _PRELUDE + """
local ep = redis.call('GET', KEYS[1])
if ep and ep ~= ARGV[1] then return {ep, 0} end
ep = ARGV[2] .. ':' .. ms_text(now_ms())
redis.call('SET', KEYS[1], ep)
return {ep, 1}
"""

# KEYS epoch, state, fence, claim; ARGV epoch, quarantine ms, seen version, agent, ttl ms,
# channel, claim id. Returns {kind, number, holder}.
CLAIM = _PRELUDE + """
local ep = redis.call('GET', KEYS[1])
if not ep or ep ~= ARGV[1] then return {'EPOCH', 0, ep or ''} end
local now = now_ms()
if string.sub(ep, -2) ~= ':g' then
  local created = tonumber(string.match(ep, '^%x+:(%d+)'))
  local left = created + tonumber(ARGV[2]) - now
  if left > 0 then return {'QUARANTINE', left, ''} end
end
local v = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
if v ~= tonumber(ARGV[3]) then return {'STALE', v, ''} end
local holder = redis.call('GET', KEYS[4])
local kind = 'OK'
if holder then
  local agent, fence = string.match(holder, '^([^|]*)|(%d+)|')
  local lost = string.sub(holder, -5) == '|lost'
  if agent ~= ARGV[4] or lost then return {'TAKEN', tonumber(fence or '0'), holder} end
  -- The caller's own claim whose answer it never saw (or re-seeded): it never sent the
  -- token, so it claims again, under a fresh fence (a re-seeded claim's may be old).
  kind = 'MINE'
end
local f = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[4], ARGV[4] .. '|' .. f .. '|' .. ms_text(now), 'PX', ARGV[5])
redis.call('PUBLISH', ARGV[6], 'C|' .. ARGV[7] .. '|' .. ARGV[4] .. '|' .. f)
return {kind, f, ''}
"""

# KEYS epoch, state, fence; ARGV epoch, expected version, fence, blob, channel.
# Returns {kind, number}: OK new version, STALE current version, FENCED state fence, EPOCH.
PUBLISH = """
local ep = redis.call('GET', KEYS[1])
if not ep or ep ~= ARGV[1] then return {'EPOCH', 0} end
local v = tonumber(redis.call('HGET', KEYS[2], 'v') or '0')
if v ~= tonumber(ARGV[2]) then return {'STALE', v} end
local sf = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
local f = tonumber(ARGV[3])
if f < sf or f > tonumber(redis.call('GET', KEYS[3]) or '0') then return {'FENCED', sf} end
redis.call('HSET', KEYS[2], 'v', v + 1, 'fence', f, 'epoch', ep, 'blob', ARGV[4])
redis.call('PUBLISH', ARGV[5], 'S|' .. ep .. '|' .. (v + 1) .. '|' .. f .. '|' .. ARGV[4])
return {'OK', v + 1}
"""

# KEYS claim; ARGV 'agent|fence|', channel, claim id, mark ('R' delete, 'L' mark lost).
# Only the holder's own claim (same agent and fence) is touched. Returns 1 or 0.
HOLDER = """
local holder = redis.call('GET', KEYS[1])
if not holder or string.sub(holder, 1, string.len(ARGV[1])) ~= ARGV[1] then return 0 end
if ARGV[4] == 'R' then
  if string.sub(holder, -5) == '|lost' then return 0 end
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'R|' .. ARGV[3] .. '|' .. ARGV[1])
else
  if string.sub(holder, -5) ~= '|lost' then
    redis.call('SET', KEYS[1], holder .. '|lost', 'KEEPTTL')
  end
  redis.call('PUBLISH', ARGV[2], 'L|' .. ARGV[3] .. '|' .. ARGV[1])
end
return 1
"""

# KEYS fence; ARGV at least. Returns the fence. Fences are never lowered.
LIFT_FENCE = """
local f = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if want > f then redis.call('SET', KEYS[1], want); f = want end
return f
"""

# KEYS claim keys; ARGV ttl ms, then one value per key. SET NX each. Returns how many were set.
RESEED = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[i + 1], 'NX', 'PX', ARGV[1]) then n = n + 1 end
end
return n
"""

# KEYS members; ARGV member id, json. Returns the Redis time in ms that was recorded.
HEARTBEAT = _PRELUDE + """
local now = now_ms()
redis.call('HSET', KEYS[1], ARGV[1], ms_text(now) .. '|' .. ARGV[2])
return now
"""

ALL = {"ensure_epoch": ENSURE_EPOCH, "rotate_epoch": ROTATE_EPOCH, "claim": CLAIM,
       "publish": PUBLISH, "holder": HOLDER, "lift_fence": LIFT_FENCE, "reseed": RESEED,
       "heartbeat": HEARTBEAT}
