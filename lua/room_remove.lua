#!lua
-- room_remove: removes socket S from room R with every half link to or from it.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R             ARGV[3]  socket id S
-- ARGV[4]  mode: "leave" | "disconnect" (the socket's node asks) | "expired" (the admin reaps)
--          | "away" (S's resume grace is over: the node that marked it away, or the admin)
-- ARGV[5]  node id N: leave/disconnect: the caller's node, which must hold S's presence key;
--          expired/away: the node whose socket index listed S ("" when unknown)
-- ARGV[6]  optional, leave/disconnect: SHA-256 (hex) of the resume token the caller issued for
--          S; when S's resume record holds another one, S was resumed (taken over): {"gone"}
--
-- Returns  {"ok", links_removed, seq}  seq of the "left" event, 0 when the room was deleted
--          {"gone"}  leave/disconnect: S's presence key is absent or held by another node;
--                    expired: S is not a member. Nothing written, except that "expired" drops
--                    the stale "R S" entry of N's socket index, and leave/disconnect by the
--                    owning node of a presence key without a record drops that key and entry.
--          {"live"}  expired: S's presence key exists, so S is alive, or S is away and its
--                    grace is not over; away: S is not away or its grace is not over (nothing
--                    written)
--          {"away", seq}  expired: S's presence lapsed (its node died) and S has a resume
--                    record with a grace: S is marked away instead (session_away), so its
--                    client can resume elsewhere; the "away" event has seq
--
-- Away sockets: a removal once the grace is over ("away", or "expired" once the presence set
-- to lapse at the deadline is gone) is published with reason "disconnect". Every removal also
-- drops S's resume record and away state (queue included), with the away counters.
--
-- Does: removes S's halves and every member's half towards S (in a PeerJS room, "~pj.K", those
-- listed by the reverse index P:{R}:rlinks:S, deleted with them; a link counts as formed, and is
-- removed from the counters, when both halves existed), degrees, linked, the record, presence,
-- P:{R}:nodes count, socket index entry, members counters of the room and its bucket. An
-- empty room is deleted (its keys, the bucket's rooms index and rooms figure; any figure it
-- still held is taken off the bucket so the sum stays right) and nothing is published;
-- otherwise seq + 1 and a "left" event goes to every node still in the room. Running it twice
-- is harmless: the second run returns {"gone"}. (The caller adds the "p2p-cleanup" entry to
-- P:events when links_removed > 0: that stream is in another slot.)
-- Does not: publish "link" events (a "left" implies the end of every link with S).

local P, R, S, mode, N = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] or ''
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR room_remove: KEYS[1] must be ' .. members)
end
if mode ~= 'leave' and mode ~= 'disconnect' and mode ~= 'expired' and mode ~= 'away' then
    return redis.error_reply('ERR room_remove: mode must be leave, disconnect, expired or away')
end
if S == '' then
    return redis.error_reply('ERR room_remove: bad arguments')
end

--@include lib/room.lua

local presence = base .. 'presence:' .. S
local entry = R .. ' ' .. S
local rec = redis.call('HGET', members, S)
local reason = mode
-- S is not a member: node N's index entry for it is stale (dropped), and nothing else to do.
local function gone_from(node)
    if node ~= '' then
        redis.call('SREM', node_index(node), entry)
    end
    return {'gone'}
end
local away = rec and away_of(S)
if mode == 'away' or (mode == 'expired' and away) then
    -- Why the deadline is checked here: whoever runs first (the node's timer, the admin's
    -- pass) removes it; a resume in between makes it not away, and a later away has a later
    -- deadline, so a stale timer never removes a resumed session.
    if not rec then
        return gone_from(N)
    end
    if not away or away.deadline > clock_ms() then
        return {'live'}
    end
    reason = 'disconnect'
elseif mode == 'expired' then
    -- Why re-checked here: the admin decided to reap from a snapshot; only the check inside
    -- the script is atomic with the removal, so a live socket is never reaped.
    if redis.call('EXISTS', presence) == 1 then
        return {'live'}
    end
    if not rec then
        return gone_from(N)
    end
    local r = resume_of(S)
    if r and (r.g or 0) > 0 then
        -- A dead node's socket: away first, not gone (its client may resume elsewhere).
        local seq = mark_away(S, node_of(rec) or N, r.g)
        return {'away', seq}
    end
else
    if redis.call('GET', presence) ~= N then
        return {'gone'}
    end
    local mine = ARGV[6] or ''
    if mine ~= '' and rec then
        local r = resume_of(S)
        if r and r.h ~= mine then
            return {'gone'} -- resumed on this node by a newer socket: not the caller's any more
        end
    end
    if not rec then
        -- A presence key without a record cannot come from these scripts; drop it so the
        -- socket index and presence do not outlive the (absent) membership.
        redis.call('DEL', presence)
        redis.call('SREM', node_index(N), entry)
        return {'gone'}
    end
end

local stats = base .. 'stats'
local degree = base .. 'degree'
local mylinks = base .. 'links:' .. S

-- Links: S's halves, and the halves every member (and every peer S named) holds towards S.
local mine = {}
local peers = {}
for _, p in ipairs(redis.call('SMEMBERS', mylinks)) do
    mine[p] = true
    peers[#peers + 1] = p
end
-- Who may hold a half towards S: every member, or in a PeerJS room (thousands of ids) the
-- reverse index of those who do (lib/room.lua, half_add).
for _, m in ipairs(redis.call(pj_room and 'SMEMBERS' or 'HKEYS',
    pj_room and base .. 'rlinks:' .. S or members)) do
    if not mine[m] then
        peers[#peers + 1] = m
    end
end
local removed, linked_delta = 0, 0
for _, p in ipairs(peers) do
    if p ~= S then
        local theirs = half_del(p, S)
        if theirs == 1 and mine[p] then
            removed = removed + 1
            local d = redis.call('HINCRBY', degree, p, -1)
            if d <= 0 then
                redis.call('HDEL', degree, p)
            end
            if d == 0 then
                linked_delta = linked_delta - 1
            end
        end
    end
end
for p in pairs(mine) do
    half_del(S, p)
end
-- One key per DEL: on a migrating slot's target a multi-key command fails when some of its
-- keys are not there yet.
redis.call('DEL', mylinks)
if pj_room then
    redis.call('DEL', base .. 'rlinks:' .. S)
end
local mydeg = tonumber(redis.call('HGET', degree, S) or '0')
redis.call('HDEL', degree, S)
if mydeg > 0 then
    linked_delta = linked_delta - 1
end
if removed > 0 then
    redis.call('HINCRBY', stats, 'links', -removed)
    bucket_add('links', -removed)
end
if linked_delta ~= 0 then
    redis.call('HINCRBY', stats, 'linked', linked_delta)
    bucket_add('linked', linked_delta)
end

-- Resume state.
drop_away(S)
redis.call('HDEL', base .. 'resume', S)

-- Membership.
local node = node_of(rec)
redis.call('HDEL', members, S)
redis.call('DEL', presence)
if node then
    if redis.call('HINCRBY', base .. 'nodes', node, -1) <= 0 then
        redis.call('HDEL', base .. 'nodes', node)
    end
    redis.call('SREM', node_index(node), entry)
end
if N ~= '' and N ~= node then
    redis.call('SREM', node_index(N), entry)
end
redis.call('HINCRBY', stats, 'members', -1)
bucket_add('members', -1)

local seq = 0
if redis.call('HLEN', members) == 0 then
    -- Whatever figure the room still holds is wrong (it has no member); take it off the
    -- bucket with the room, so the bucket stays the sum of its rooms.
    local left = redis.call('HMGET', stats, 'members', 'links', 'linked', 'away')
    local fields = {'members', 'links', 'linked', 'away'}
    for i = 1, 4 do
        local v = tonumber(left[i] or '0') or 0
        if v ~= 0 then
            bucket_add(fields[i], -v)
        end
    end
    redis.call('DEL', members, base .. 'nodes', degree, stats, base .. 'resume', base .. 'away',
        base .. 'qbytes')
    if redis.call('SREM', bucket .. 'rooms', R) == 1 then
        bucket_add('rooms', -1)
    end
else
    seq = redis.call('HINCRBY', stats, 'seq', 1)
    local event = '{"t":"left","room":' .. cjson.encode(R) .. ',"seq":' .. int(seq) ..
        ',"id":' .. cjson.encode(S) .. ',"reason":' .. cjson.encode(reason) .. '}'
    publish_room(event)
end

return {'ok', removed, seq}
