#!lua
-- node_forget: drops a dead node from the admin's reap index.
--
-- KEYS     none needed (call with numkeys 0, or KEYS[1] = P:node:N:sockets); names come from ARGV
-- ARGV[1]  prefix P           ARGV[2]  node id N
--
-- Returns  1  N was forgotten: its lease P:node:N is gone and its socket index
--             P:node:N:sockets is empty, so the index key is deleted and N leaves P:nodes
--          0  N was kept: its lease is live, or sockets it hosted still wait to be reaped
--
-- Does: the check and the removal in one step, so a node that registers again, or a socket
-- that joins (room_join adds N to P:nodes again), is never lost between the two.
-- Does not: reap sockets (the admin runs room_remove "expired" for each index entry first).

local P, N = ARGV[1], ARGV[2]
if not N or N == '' then
    return redis.error_reply('ERR node_forget: bad arguments')
end
local lease = P .. ':node:' .. N
local sockets = lease .. ':sockets'
if redis.call('EXISTS', lease) == 0 and redis.call('SCARD', sockets) == 0 then
    redis.call('DEL', sockets)
    redis.call('SREM', P .. ':nodes', N)
    return 1
end
return 0
