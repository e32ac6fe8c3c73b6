#!lua
-- stats_check: recomputes P:stats from the rooms' figures and repairs it.
--
-- KEYS     none needed (call with numkeys 0, or KEYS[1] = P:stats); names come from ARGV
-- ARGV[1]  prefix P
--
-- Returns  {fixes}: how many of the fields rooms, members, links, linked of P:stats were wrong
--          (each one is rewritten with the true sum)
--
-- Does: rooms = SCARD P:rooms; members, links and linked = the sums of P:{R}:stats over every
-- room R of P:rooms. Run it after room_check has repaired each room's own figures.
-- Does not: look at the rooms' sets (room_check's work); scan the keyspace. It reads every room
-- of P:rooms (SMEMBERS), which is fine for version 1's single primary; a Redis Cluster version
-- would sum per slot from the admin instead.

local P = ARGV[1]
if not P or P == '' then
    return redis.error_reply('ERR stats_check: bad arguments')
end
local rooms = redis.call('SMEMBERS', P .. ':rooms')
local fields = {'members', 'links', 'linked'}
local sum = {rooms = #rooms, members = 0, links = 0, linked = 0}
for _, R in ipairs(rooms) do
    local v = redis.call('HMGET', P .. ':{' .. R .. '}:stats', 'members', 'links', 'linked')
    for i = 1, 3 do
        sum[fields[i]] = sum[fields[i]] + (tonumber(v[i] or '0') or 0)
    end
end
local gstats = P .. ':stats'
local fixes = 0
for _, f in ipairs({'rooms', 'members', 'links', 'linked'}) do
    local cur = redis.call('HGET', gstats, f)
    if tonumber(cur or '0') ~= sum[f] then
        redis.call('HSET', gstats, f, string.format('%d', sum[f]))
        fixes = fixes + 1
    end
end
return {fixes}
