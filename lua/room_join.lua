#!lua
-- room_join: adds socket S to room R.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R             ARGV[3]  socket id S
-- ARGV[4]  node id N          ARGV[5]  node epoch E
-- ARGV[6]  meta: a JSON object, validated and compact (e.g. {}), stored and relayed verbatim
-- ARGV[7]  presence TTL in ms ARGV[8]  max members of the room
-- ARGV[9]  optional: SHA-256 (hex) of S's resume token; "" or absent: no resume record
-- ARGV[10] origin of the socket   ARGV[11] JWT subject ("" without)   ARGV[12] grace in ms
--
-- Returns  {"ok", seq, S1, rec1, S2, rec2, ...}: the new sequence number and every member
--          (the joiner included) with its record {"node":N,"epoch":E,"meta":{...}}; an away
--          member's record ends with ,"away":1
--          {"exists"}     S already has a presence key or a record in R (nothing written),
--                         except when the record is this node's and its presence is live: then
--                         {"ok", ...} as above with the current seq (a retried join that had
--                         run after the node's command timeout; nothing written but PEXPIRE)
--          {"room-full"}  R has max members already (nothing written)
--
-- Does: record, presence (PX), resume record P:{R}:resume (ARGV[9] given), P:{R}:nodes count, socket index P:{T}:node:N:sockets ("R S"),
-- members counters of the room and the bucket, the room's creation when it was empty (the
-- bucket's rooms index and rooms figure, a time based seq), seq + 1, and the "join" event to
-- every node of the room, the joiner's own node included.
-- Does not: check that S is in no other room (the node knows), validate meta, touch links.

local P, R, S, N, E, meta = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ttl, max = tonumber(ARGV[7]), tonumber(ARGV[8])
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR room_join: KEYS[1] must be ' .. members)
end
if not ttl or ttl < 1 or not max or S == '' or N == '' then
    return redis.error_reply('ERR room_join: bad arguments')
end
if string.sub(meta, 1, 1) ~= '{' or string.sub(meta, -1) ~= '}' then
    return redis.error_reply('ERR room_join: meta must be a JSON object')
end

--@include lib/room.lua

local presence = base .. 'presence:' .. S
local function snapshot(seq)
    local reply = {'ok', seq}
    local all = listed(redis.call('HGETALL', members))
    for i = 1, #all do
        reply[#reply + 1] = all[i]
    end
    return reply
end

local existing = redis.call('HGET', members, S)
if existing then
    -- Why: a join the node gave up on (a command timeout) may still have run once Redis got
    -- to it. The same socket on the same node asking again is answered as if this call had
    -- done it: nothing changes, nothing is counted twice.
    if node_of(existing) == N and redis.call('EXISTS', presence) == 1 then
        redis.call('PEXPIRE', presence, ttl)
        -- The node made a new resume token for the retry and gave the client that one (the
        -- first one's hash is what the timed-out call stored, and nobody holds that token):
        -- without this, every later check of S's hash (leave, session_away, resume) fails.
        if (ARGV[9] or '') ~= '' then
            set_resume(S, ARGV[9], ARGV[10] or '', ARGV[11] or '', ARGV[12] or '0')
        end
        return snapshot(tonumber(redis.call('HGET', base .. 'stats', 'seq') or '0'))
    end
    return {'exists'}
end
if redis.call('EXISTS', presence) == 1 then
    return {'exists'}
end
local count = redis.call('HLEN', members)
if count >= max then
    return {'room-full'}
end

if count == 0 then
    open_room()
end
claim(S, N, ttl)
if (ARGV[9] or '') ~= '' then
    -- Why stored at the join: the node may die at any moment, and the token must still let
    -- its client resume elsewhere (the takeover in session_resume).
    set_resume(S, ARGV[9], ARGV[10] or '', ARGV[11] or '', ARGV[12] or '0')
end
return snapshot(add_member(S, N, E, meta))
