"""The Lua scripts that change a partition: each runs atomically on the partition's shard
and appends what it changed to the partition's change log (seq numbers every change, so a
frontend that missed one knows to reload), then PUBLISHes the log's name on CHANGES
(Redis Cluster broadcasts it to every node), so frontends read the log at once instead
of polling it. KEYS are declared for routing; the entry keys a script also touches share
their hash tag (the same slot)."""

from __future__ import annotations

from semcache_server.redis_backend.keys import CHANGES

# KEYS: meta, ids, vectors, exact, log, entry
# ARGV: id, record, expire_at_ms, size, exact_key, vector, namespace, model, version, now,
#       log_max_len, expires_at (s, 0 = never), entry_prefix
# -> {created (1: the partition became live), replaced id or ""}; {-1}: the id is taken
STORE = """
if redis.call('EXISTS', KEYS[6]) == 1 then return {-1, ''} end
local created = 0
if redis.call('HGET', KEYS[1], 'live') ~= '1' then
  redis.call('HSET', KEYS[1], 'namespace', ARGV[7], 'model', ARGV[8], 'version', ARGV[9], 'live', '1')
  redis.call('HSETNX', KEYS[1], 'created_at', ARGV[10])
  created = 1
end
local replaced = ''
if ARGV[5] ~= '' then
  local old = redis.call('HGET', KEYS[4], ARGV[5])
  if old then
    local info = redis.call('HGET', KEYS[2], old)
    if info then
      redis.call('HDEL', KEYS[2], old)
      redis.call('HDEL', KEYS[3], old)
      redis.call('HINCRBY', KEYS[1], 'bytes', -tonumber(string.match(info, '^(%d+)')))
      local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[11], '*', 'op', 'del', 'id', old, 'seq', seq)
    end
    if redis.call('DEL', ARGV[13] .. old) == 1 then replaced = old end
  end
end
redis.call('SET', KEYS[6], ARGV[2], 'PXAT', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], ARGV[5], ARGV[1]) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4] .. ' ' .. ARGV[12] .. ' ' .. ARGV[5])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[6])
redis.call('HINCRBY', KEYS[1], 'bytes', ARGV[4])
redis.call('HSET', KEYS[1], 'last_used_at', ARGV[10])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[11], '*', 'op', 'add', 'id', ARGV[1], 'seq', seq)
redis.call('PUBLISH', '__CHANGES__', KEYS[5])
return {created, replaced}
"""

# KEYS: meta, ids, vectors, exact, log
# ARGV: entry_prefix, log_max_len, reason counter ("" = none), now, id...
# Removes each listed entry the partition holds. An entry whose record Redis already
# dropped counts as an expiration (past its expiry) or an eviction (maxmemory).
# -> {removed, expired, evicted}
REMOVE = """
local removed, expired, evicted = 0, 0, 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local info = redis.call('HGET', KEYS[2], id)
  if info then
    local size, expires, exact = string.match(info, '^(%d+) (%S+) (.*)$')
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HINCRBY', KEYS[1], 'bytes', -tonumber(size))
    if exact ~= '' and redis.call('HGET', KEYS[4], exact) == id then redis.call('HDEL', KEYS[4], exact) end
    if redis.call('DEL', ARGV[1] .. id) == 1 then
      removed = removed + 1
    elseif tonumber(expires) > 0 and tonumber(expires) <= tonumber(ARGV[4]) then
      expired = expired + 1
    else
      evicted = evicted + 1
    end
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'op', 'del', 'id', id, 'seq', seq)
  end
end
if removed + expired + evicted > 0 then redis.call('PUBLISH', '__CHANGES__', KEYS[5]) end
if ARGV[3] ~= '' and removed > 0 then redis.call('HINCRBY', KEYS[1], ARGV[3], removed) end
if expired > 0 then redis.call('HINCRBY', KEYS[1], 'expirations', expired) end
if evicted > 0 then redis.call('HINCRBY', KEYS[1], 'evictions', evicted) end
return {removed, expired, evicted}
"""

# KEYS: meta, ids, vectors, exact, log, old, olds
# ARGV: log_max_len
# Empties the partition at once: its entries move to `old` (deleted next, in chunks, by
# DROP_OLD), the exact tier and vectors go, and frontends drop their replica on `clear`.
# -> the number of entries moved
CLEAR = """
local n = redis.call('HLEN', KEYS[2])
if n > 0 then
  redis.call('RENAME', KEYS[2], KEYS[6])
  redis.call('SADD', KEYS[7], KEYS[6])
end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'live', '0', 'bytes', 0)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], '*', 'op', 'clear', 'seq', seq)
redis.call('PUBLISH', '__CHANGES__', KEYS[5])
return n
"""

# KEYS: meta, old, olds
# ARGV: entry_prefix, id...
# Deletes these entries of an emptied partition; forgets `old` once it is empty.
# -> how many records were still there
DROP_OLD = """
local deleted = 0
for i = 2, #ARGV do
  deleted = deleted + redis.call('DEL', ARGV[1] .. ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
if deleted > 0 then redis.call('HINCRBY', KEYS[1], 'invalidations', deleted) end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], KEYS[2]) end
return deleted
"""

# KEYS: entry; ARGV: old record, new record -> 1 if replaced, 0 if the entry changed or went
AMEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""


STORE, REMOVE, CLEAR = (script.replace("__CHANGES__", CHANGES) for script in (STORE, REMOVE, CLEAR))
