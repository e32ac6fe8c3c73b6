#!lua flags=no-writes,allow-cross-slot-keys
-- bucket_read: the admin reads many buckets of one primary in one call.
--
-- KEYS     none: the admin sends it to one primary with the tags of buckets whose slots that
--          primary serves (a tag of a slot it does not serve is an error from Redis)
-- ARGV[1]  prefix P           ARGV[2]  suffix X ("rooms", "node:N:sockets", or "" for none)
-- ARGV[3..n]  bucket tags T (lua/README.md: "#" on a single Redis, "#<n>" per slot on a cluster)
--
-- Returns  {rooms, members, links, linked, away, pj_members, pj_links, pj_away, T1, T2, ...}:
--          the sums of the fields of P:{T}:stats over the tags given (pj_*: the PeerJS share
--          of members, links, away; docs/peerjs.md), then the tags whose P:{T}:X exists (non-empty sets), in order;
--          with X = "rooms" also those whose figures are not all 0 (drift left in a bucket
--          without rooms: the reconcile pass repairs it with stats_check)
--
-- Does: reads P:{T}:stats and checks P:{T}:X for each tag; bounded by the number of tags (at
-- most the 16384 slots of a cluster, sent in chunks), never by the number of rooms.
-- Does not: write anything (flags=no-writes); read rooms; run in a room script's place (it
-- spans slots, allowed by allow-cross-slot-keys only because it writes nothing).

local P, X = ARGV[1], ARGV[2]
if not P or P == '' or not X then
    return redis.error_reply('ERR bucket_read: bad arguments')
end
local sum = {0, 0, 0, 0, 0, 0, 0, 0}
local reply = {}
for i = 3, #ARGV do
    local b = P .. ':{' .. ARGV[i] .. '}:'
    local v = redis.call('HMGET', b .. 'stats', 'rooms', 'members', 'links', 'linked', 'away',
        'pj_members', 'pj_links', 'pj_away')
    for k = 1, 8 do
        sum[k] = sum[k] + (tonumber(v[k] or '0') or 0)
    end
    local drift = false
    for k = 1, 4 do
        drift = drift or (tonumber(v[k] or '0') or 0) ~= 0
    end
    if (X ~= '' and redis.call('EXISTS', b .. X) == 1) or (X == 'rooms' and drift) then
        reply[#reply + 1] = ARGV[i]
    end
end
local out = {sum[1], sum[2], sum[3], sum[4], sum[5], sum[6], sum[7], sum[8]}
for i = 1, #reply do
    out[#out + 1] = reply[i]
end
return out
