#!lua flags=no-writes
-- room_read: a consistent snapshot of room R for a node's resync.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- ARGV[1]  prefix P           ARGV[2]  room R
--
-- Returns  {seq, S1, rec1, S2, rec2, ...}: the room's current sequence number and every member
--          with its record {"node":N,"epoch":E,"meta":{...}}; {0} when the room does not exist.
--
-- Does: reads P:{R}:stats seq and P:{R}:members in one atomic step, so the members are exactly
-- those after event number seq.
-- Does not: write anything (flags=no-writes: it also runs under memory pressure and on
-- replicas); return links or presence.

local base = ARGV[1] .. ':{' .. ARGV[2] .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR room_read: KEYS[1] must be ' .. members)
end
local all = redis.call('HGETALL', members)
local seq = 0
if #all > 0 then
    seq = tonumber(redis.call('HGET', base .. 'stats', 'seq') or '0') or 0
end
-- Away members: their record ends with ,"away":1 (as room_join and session_resume list them).
local away = {}
for _, s in ipairs(redis.call('HKEYS', base .. 'away')) do
    away[s] = true
end
for i = 1, #all - 1, 2 do
    if away[all[i]] then
        all[i + 1] = string.sub(all[i + 1], 1, -2) .. ',"away":1}'
    end
end
local reply = {seq}
for i = 1, #all do
    reply[#reply + 1] = all[i]
end
return reply
