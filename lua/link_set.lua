#!lua
-- link_set: socket S reports its P2P connection with peer B as up or down.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R             ARGV[3]  socket id S
-- ARGV[4]  peer B             ARGV[5]  "up" | "down"      ARGV[6]  node id N (S's node)
--
-- Returns  {"ok", changed}      changed = 1 when a link formed ("up") or ended ("down"), else 0
--          {"gone"}             S's presence key is absent or held by another node, or S has
--                               no record (nothing written; the node closes S with 4000)
--          {"peer-not-found"}   B is not a member of R, or B is S (nothing written)
--
-- Does: up adds S's half (B to P:{R}:links:S); the link forms when B's half towards S exists
-- too. Down removes both halves; the link ends when both existed. A formed or ended link
-- updates links (room and bucket), both ends' degrees, and linked when a degree goes 0<->1,
-- and publishes {"t":"link",...,"state":...} stamped with the room's CURRENT seq (a link is not
-- a membership change) to the nodes of S and B, once when they share a node. In a PeerJS room
-- ("~pj.K") the reverse index P:{R}:rlinks:B follows each half (lib/room.lua, half_add).
-- Does not: increment seq; publish anything when nothing formed or ended (idempotent).

local P, R, S, B, state, N = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR link_set: KEYS[1] must be ' .. members)
end
if state ~= 'up' and state ~= 'down' then
    return redis.error_reply('ERR link_set: state must be up or down')
end

--@include lib/room.lua

if redis.call('GET', base .. 'presence:' .. S) ~= N then
    return {'gone'}
end
local recs = redis.call('HMGET', members, S, B)
if not recs[1] then
    return {'gone'}
end
if not recs[2] or B == S then
    return {'peer-not-found'}
end

local theirs = base .. 'links:' .. B
local changed = 0
local delta = 0
if state == 'up' then
    if half_add(S, B) == 1 and redis.call('SISMEMBER', theirs, S) == 1 then
        changed, delta = 1, 1
    end
else
    local a = half_del(S, B)
    local b = half_del(B, S)
    if a == 1 and b == 1 then
        changed, delta = 1, -1
    elseif b == 1 then
        -- Only B's half went (no link had formed): nobody is told, but B's node keeps B's
        -- halves to re-assert them after a data loss, so it must forget this one.
        local nb = node_of(recs[2])
        if nb then
            publish_to(nb, '{"t":"unlink","room":' .. cjson.encode(R) ..
                ',"a":' .. cjson.encode(S) .. ',"b":' .. cjson.encode(B) .. '}')
        end
    end
end
if changed == 0 then
    return {'ok', 0}
end

count_link(S, B, delta)
announce_link(S, B, state, node_of(recs[1]), node_of(recs[2]))
return {'ok', 1}
