#!lua
-- room_assert: a node re-asserts one of its live sockets after Redis lost its data.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R             ARGV[3]  socket id S
-- ARGV[4]  node id N          ARGV[5]  node epoch E       ARGV[6]  meta (JSON object text)
-- ARGV[7]  presence TTL in ms
-- ARGV[8]  S's resume record as the node knows it ({"h":...,"o":...,"u":...,"g":...}, see
--          room_join), or "": restored when missing, so a socket lost after the data loss
--          still gets its grace
-- ARGV[9..n]  the peers S holds a half towards (its "link up"s that were not taken back)
--
-- Returns  {"ok", created}: created = 1 when S's record had to be re-created, 0 when it existed
--
-- Does: S's resume record when missing (ARGV[8]); SET presence (PX; the one place besides room_join that creates it, because only the
-- owning node, which knows S is alive, calls it). A missing record is added exactly as
-- room_join adds it (record, P:{R}:nodes, socket index, counters, room creation with
-- a time based seq, "join" event with a new seq); an existing one only gets its index entry
-- back. Then S's half towards each listed peer that is a member is added as "link up" does
-- (a link forms when the peer's half exists: counters, degrees, "link" event). Peers that are
-- not members are skipped: their own node re-asserts them later and adds the other half then.
-- Does not: enforce max members (the socket was admitted before the loss); remove halves S
-- holds that are not listed; run when Redis did not lose data (the node decides, rule 2).

local P, R, S, N, E, meta = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ttl = tonumber(ARGV[7])
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR room_assert: KEYS[1] must be ' .. members)
end
if not ttl or ttl < 1 or S == '' or N == '' then
    return redis.error_reply('ERR room_assert: bad arguments')
end
if string.sub(meta, 1, 1) ~= '{' or string.sub(meta, -1) ~= '}' then
    return redis.error_reply('ERR room_assert: meta must be a JSON object')
end

--@include lib/room.lua

claim(S, N, ttl)
local created = 0
if redis.call('HEXISTS', members, S) == 0 then
    created = 1
    if redis.call('HLEN', members) == 0 then
        open_room()
    end
    add_member(S, N, E, meta)
end

local record = ARGV[8] or ''
if record ~= '' and not resume_of(S) then
    local ok, rr = pcall(cjson.decode, record)
    if not ok or type(rr) ~= 'table' or type(rr.h) ~= 'string' then
        return redis.error_reply('ERR room_assert: bad resume record')
    end
    set_resume(S, rr.h, rr.o or '', rr.u or '', rr.g or 0)
end

local my_node = node_of(redis.call('HGET', members, S))
for i = 9, #ARGV do
    local B = ARGV[i]
    local rec = B ~= S and redis.call('HGET', members, B)
    if rec and half_add(S, B) == 1 and
        redis.call('SISMEMBER', base .. 'links:' .. B, S) == 1 then
        count_link(S, B, 1)
        announce_link(S, B, 'up', my_node, node_of(rec))
    end
end

return {'ok', created}
