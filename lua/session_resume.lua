#!lua
-- session_resume: a new socket on node N2 presents S's resume token and takes S over: same id,
-- room, meta and link halves. Works whether S is away or still looks present (its old node has
-- not noticed the drop yet, or died): the token proves the client owns S.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R             ARGV[3]  socket id S
-- ARGV[4]  SHA-256 (hex) of the token presented
-- ARGV[5]  origin of the new socket     ARGV[6]  JWT subject of the new socket ("" without)
-- ARGV[7]  new node N2        ARGV[8]  N2's epoch
-- ARGV[9]  SHA-256 (hex) of the next token (issued with the reply)
-- ARGV[10] grace in ms for the next token    ARGV[11] presence TTL in ms
--
-- Returns  {"ok", seq, {S1, rec1, ...}, {joined...}, {left...}, {halves...}, {formed...},
--           {queued...}}
--          seq of the "back" event; every member with its record (as room_read lists them); the
--          ids that joined and left while S was away (empty when S was not away); S's halves
--          (peers in P:{R}:links:S); the peers whose link with S is formed; the queued signals
--          "F DATA" in the order they were queued.
--          {"unknown"}  S is not a member, has no resume record, the token's hash, origin or
--                       subject differ, or S's grace is over: nothing written
--
-- Does: the record's node and epoch (meta kept), P:{R}:nodes counts, the socket index entry
-- moved from the old node to N2, presence SET to N2 (PX ttl), the resume record's hash replaced
-- (the token is spent), S's away state dropped (queue returned, counters), seq + 1 and the
-- "back" event {"t":"back",...,"node":N2,"meta":...} to every node of the room and to the old
-- node (so it drops its stale copy of the socket, without any cleanup).
-- Does not: touch links (S keeps its halves; the peers' halves towards S stay).

local P, R, S, H, O, U = ARGV[1], ARGV[2], ARGV[3], ARGV[4] or '', ARGV[5] or '', ARGV[6] or ''
local N2, E2, H2 = ARGV[7] or '', ARGV[8] or '', ARGV[9] or ''
local grace, ttl = tonumber(ARGV[10]), tonumber(ARGV[11])
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR session_resume: KEYS[1] must be ' .. members)
end
if S == '' or N2 == '' or H2 == '' or not grace or not ttl or ttl < 1 then
    return redis.error_reply('ERR session_resume: bad arguments')
end

--@include lib/room.lua

local rec = redis.call('HGET', members, S)
local r = rec and resume_of(S)
-- Why hashes are compared: the token itself is never stored, and comparing two hashes leaks
-- nothing useful about the token through timing.
if not r or H == '' or r.h ~= H or r.o ~= O or r.u ~= U then
    return {'unknown'}
end
local away = away_of(S)
if away and away.deadline <= clock_ms() then
    return {'unknown'} -- the grace is over: the timer or the admin removes it
end
-- Take over: the record, the node counts, the socket index, presence, the next token.
local old, meta = move_member(S, rec, N2, E2)
claim(S, N2, ttl)
set_resume(S, H2, O, U, grace)

-- What changed while away, and the queue.
local joined, left, queued = {}, {}, {}
local ids = redis.call('HKEYS', members)
if away then
    local before = {}
    for _, m in ipairs(away.members) do
        before[m] = true
    end
    local now = {}
    for _, m in ipairs(ids) do
        now[m] = true
        if not before[m] and m ~= S then
            joined[#joined + 1] = m
        end
    end
    for _, m in ipairs(away.members) do
        if not now[m] then
            left[#left + 1] = m
        end
    end
    queued = redis.call('LRANGE', base .. 'queue:' .. S, 0, -1)
    drop_away(S)
end
local halves = redis.call('SMEMBERS', base .. 'links:' .. S)
local formed = {}
for _, p in ipairs(halves) do
    if redis.call('SISMEMBER', base .. 'links:' .. p, S) == 1 then
        formed[#formed + 1] = p
    end
end

local seq = redis.call('HINCRBY', base .. 'stats', 'seq', 1)
local event = '{"t":"back","room":' .. cjson.encode(R) .. ',"seq":' .. int(seq) .. ',"id":' ..
    cjson.encode(S) .. ',"node":' .. cjson.encode(N2) .. ',"meta":' .. meta .. '}'
publish_room(event)
if old and old ~= N2 and redis.call('HEXISTS', base .. 'nodes', old) == 0 then
    publish_to(old, event)
end
return {'ok', seq, listed(redis.call('HGETALL', members)), joined, left, halves, formed, queued}
