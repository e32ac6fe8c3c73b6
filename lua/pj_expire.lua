#!lua
-- pj_expire: the expire timeout of F's messages to D is over: those still queued are dropped
-- (D did not claim its id in time), and F's node tells F with one EXPIRE.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R ("~pj.K")   ARGV[3]  sender F
-- ARGV[4]  recipient D
--
-- Returns  {removed}: how many of F's messages were still queued for D (0: all were delivered
--          by D's claim, or the queue lapsed)
--
-- Does: removes the "F ..." items of P:{R}:pjq:D (the others keep their order) and their
-- bytes from P:{R}:pjqb:D; deletes both when nothing is left.
-- Does not: send the EXPIRE (the caller's node does), touch members or figures.

local P, R, F, D = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR pj_expire: KEYS[1] must be ' .. members)
end
if not F or F == '' or not D or D == '' then
    return redis.error_reply('ERR pj_expire: bad arguments')
end

--@include lib/room.lua

local q, qb = pj_queue(D)
local items = redis.call('LRANGE', q, 0, -1)
local head = F .. ' '
local keep, removed, bytes = {}, 0, 0
for _, it in ipairs(items) do
    if string.sub(it, 1, #head) == head then
        removed = removed + 1
        bytes = bytes + #it
    else
        keep[#keep + 1] = it
    end
end
if removed == 0 then
    return {0}
end
if #keep == 0 then
    redis.call('DEL', q) -- one key per DEL (room_remove says why)
    redis.call('DEL', qb)
    return {removed}
end
local life = redis.call('PTTL', q)
redis.call('DEL', q)
redis.call('RPUSH', q, unpack(keep))
if life > 0 then
    redis.call('PEXPIRE', q, life)
end
redis.call('DECRBY', qb, bytes)
return {removed}
