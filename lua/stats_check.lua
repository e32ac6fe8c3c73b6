#!lua
-- stats_check: recomputes one bucket's figures from its rooms' figures and repairs them.
--
-- KEYS[1]  P:{T}:stats, the bucket (T: a tag of one slot on a Redis Cluster, "all" on a single
--          Redis; lua/README.md). Its rooms index P:{T}:rooms is in the same slot.
-- ARGV[1]  prefix P
--
-- Returns  {fixes}: how many of the fields rooms, members, links, linked, pj_members, pj_links
--          of the bucket were wrong (each one is rewritten with the true sum)
--
-- Does: rooms = SCARD P:{T}:rooms; members, links and linked = the sums of P:{R}:stats over
-- every room R of P:{T}:rooms (those rooms are in T's slot); pj_members and pj_links the same
-- sums over the PeerJS rooms ("~pj.K", docs/peerjs.md) only. Run it after room_check has
-- repaired each room's own figures.
-- Does not: look at the rooms' sets (room_check's work); scan the keyspace; look at other
-- buckets (the admin sums them).

local P = ARGV[1]
local gstats = KEYS[1] or ''
local bucket = string.sub(gstats, 1, -6)
if not P or P == '' or string.sub(gstats, -6) ~= ':stats' or
    string.sub(bucket, 1, #P + 3) ~= P .. ':{#' or string.sub(bucket, -2) ~= '}:' then
    return redis.error_reply('ERR stats_check: KEYS[1] must be a bucket P:{T}:stats')
end
-- As in lib/room.lua: a migrating slot's keys may be split; check once it has moved.
if type(redis.pcall('EXISTS', bucket .. 'moving')) == 'table' then
    return redis.error_reply('TRYAGAIN ' .. gstats .. ': its slot is being migrated')
end
local rooms = redis.call('SMEMBERS', bucket .. 'rooms')
local fields = {'members', 'links', 'linked'}
local sum = {rooms = #rooms, members = 0, links = 0, linked = 0, pj_members = 0, pj_links = 0}
for _, R in ipairs(rooms) do
    local v = redis.call('HMGET', P .. ':{' .. R .. '}:stats', 'members', 'links', 'linked')
    for i = 1, 3 do
        sum[fields[i]] = sum[fields[i]] + (tonumber(v[i] or '0') or 0)
    end
    if string.sub(R, 1, 4) == '~pj.' then
        sum.pj_members = sum.pj_members + (tonumber(v[1] or '0') or 0)
        sum.pj_links = sum.pj_links + (tonumber(v[2] or '0') or 0)
    end
end
local fixes = 0
for _, f in ipairs({'rooms', 'members', 'links', 'linked', 'pj_members', 'pj_links'}) do
    local cur = redis.call('HGET', gstats, f)
    if tonumber(cur or '0') ~= sum[f] then
        redis.call('HSET', gstats, f, string.format('%d', sum[f]))
        fixes = fixes + 1
    end
end
return {fixes}
