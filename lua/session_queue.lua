#!lua
-- session_queue: a signal from F to away socket S of room R waits for S's resume.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R             ARGV[3]  recipient S
-- ARGV[4]  sender F           ARGV[5]  data: the signal's JSON text, as the sender wrote it
-- ARGV[6]  most signals queued per socket    ARGV[7]  most bytes queued per socket
--
-- Returns  {"ok", n}          queued; n signals are queued for S now
--          {"present", N}     S is a member and not away: send it to node N's channel instead
--          {"gone"}           S is not a member of R
--          {"full"}           the count or byte bound would be passed: nothing written
--
-- Does: RPUSH "F DATA" to P:{R}:queue:S (PEXPIREAT S's deadline: the list never outlives the
-- grace), P:{R}:qbytes S + its length. Ordered like every script of the room's slot, so the
-- queue holds a sender's signals in the order it sent them.
-- Does not: check the sender (its node's view did), publish anything.

local P, R, S, F, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] or ''
local max, maxbytes = tonumber(ARGV[6]), tonumber(ARGV[7])
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR session_queue: KEYS[1] must be ' .. members)
end
if S == '' or F == '' or not max or not maxbytes then
    return redis.error_reply('ERR session_queue: bad arguments')
end

--@include lib/room.lua

local rec = redis.call('HGET', members, S)
if not rec then
    return {'gone'}
end
local away = away_of(S)
if not away then
    return {'present', node_of(rec) or ''}
end
local queue = base .. 'queue:' .. S
local item = F .. ' ' .. data
local bytes = tonumber(redis.call('HGET', base .. 'qbytes', S) or '0') or 0
if redis.call('LLEN', queue) >= max or bytes + #item > maxbytes then
    return {'full'}
end
local n = redis.call('RPUSH', queue, item)
redis.call('PEXPIREAT', queue, int(away.deadline))
redis.call('HINCRBY', base .. 'qbytes', S, #item)
return {'ok', n}
