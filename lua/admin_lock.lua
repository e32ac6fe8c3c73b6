#!lua
-- admin_lock: takes or renews the reconcile lease of one admin process.
--
-- KEYS[1]  P:admin:lock (routes the call to that key's slot on a Redis Cluster)
-- ARGV[1]  prefix P           ARGV[2]  holder id H (unique per admin process)
-- ARGV[3]  lease TTL in ms
--
-- Returns  1  H holds P:admin:lock now, for ttl ms from this call (taken or renewed)
--          0  another admin holds it (nothing written)
--
-- Does: SET P:admin:lock H PX ttl when the lock is absent or already H's.
-- Does not: release the lock (let it lapse, or DEL it only after checking it is still yours).

local P, H, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if not H or H == '' or not ttl or ttl < 1 then
    return redis.error_reply('ERR admin_lock: bad arguments')
end
local lock = P .. ':admin:lock'
if KEYS[1] ~= lock then
    return redis.error_reply('ERR admin_lock: KEYS[1] must be ' .. lock)
end
local cur = redis.call('GET', lock)
if cur and cur ~= H then
    return 0
end
redis.call('SET', lock, H, 'PX', string.format('%d', ttl))
return 1
