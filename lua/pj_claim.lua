#!lua
-- pj_claim: a PeerJS client claims id S of PeerJS key K (room R = "~pj.K"; docs/peerjs.md).
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R ("~pj.K")   ARGV[3]  the PeerJS id S
-- ARGV[4]  node id N          ARGV[5]  node epoch E
-- ARGV[6]  SHA-256 (hex) of the client's PeerJS token (fixed for the id: never rotated)
-- ARGV[7]  presence TTL in ms ARGV[8]  resume grace in ms (0: a lost socket frees the id)
-- ARGV[9]  JWT subject ("" without)
-- ARGV[10] "1": the reply lists the members (the node has no view of R yet), else "0"
--
-- Returns  {"ok", seq, how, {queued...}, {halves...}, {S1, rec1, ...}}
--          how: "new" (S was not a member: it joined) or "reclaimed" (S was a member with the
--          same token hash and subject, away or held by a live socket on any node: taken over);
--          queued: the "F FRAME" messages waiting for S (P:{R}:pjq:S), in order, now deleted;
--          halves: S's link halves; the member list only when ARGV[10] is "1" (else empty)
--          {"taken"}  S is a member with another token (or subject): nothing written
--
-- Does: (new) the room's creation when empty, presence (PX), socket index, resume record
-- {"h","o":"","u","g"}, the member record (meta {}), node count, members counters (pj_members
-- too), seq + 1 and the "join" event.
-- (reclaimed) the record's node and epoch, node counts, socket index entry moved,
-- presence SET for N, S's away state dropped, seq + 1 and the "back" event to every node of R
-- and to the old node (which closes its stale socket with 4000).
-- Does not: check --max-room-members (the node's connection limit caps PeerJS ids, as peer's
-- concurrent_limit), rotate the token, touch links.

local P, R, S, N, E, H = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] or ''
local ttl, grace, U = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] or ''
local want_list = ARGV[10] == '1'
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR pj_claim: KEYS[1] must be ' .. members)
end
if string.sub(R, 1, 4) ~= '~pj.' or S == '' or N == '' or H == '' or not ttl or ttl < 1 or
    not grace then
    return redis.error_reply('ERR pj_claim: bad arguments')
end

--@include lib/room.lua

local function list()
    if want_list then
        return listed(redis.call('HGETALL', members))
    end
    return {}
end

local function take_queue()
    local q, qb = pj_queue(S)
    local queued = redis.call('LRANGE', q, 0, -1)
    redis.call('DEL', q) -- one key per DEL (room_remove says why)
    redis.call('DEL', qb)
    return queued
end

local rec = redis.call('HGET', members, S)
if not rec then
    if redis.call('HLEN', members) == 0 then
        open_room()
    end
    claim(S, N, ttl)
    set_resume(S, H, '', U, grace)
    local seq = add_member(S, N, E, '{}')
    return {'ok', seq, 'new', take_queue(), {}, list()}
end

local r = resume_of(S)
if not r or r.h ~= H or (r.u or '') ~= U then
    return {'taken'}
end
local old = move_member(S, rec, N, E)
claim(S, N, ttl)
set_resume(S, H, '', U, grace)
drop_away(S)
local seq = redis.call('HINCRBY', base .. 'stats', 'seq', 1)
local event = '{"t":"back","room":' .. cjson.encode(R) .. ',"seq":' .. int(seq) .. ',"id":' ..
    cjson.encode(S) .. ',"node":' .. cjson.encode(N) .. ',"meta":{}}'
publish_room(event)
if old and old ~= N and redis.call('HEXISTS', base .. 'nodes', old) == 0 then
    publish_to(old, event)
end
return {'ok', seq, 'reclaimed', take_queue(), redis.call('SMEMBERS', base .. 'links:' .. S), list()}
