#!lua
-- pj_send: a PeerJS message from F to D that F's node could not hand to a connected D (D not
-- in its view, or away): published if D is connected by now, else queued for D's claim.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R ("~pj.K")   ARGV[3]  sender F
-- ARGV[4]  recipient D        ARGV[5]  the frame {"type":..,"src":F,"dst":D,..} as D gets it
-- ARGV[6]  "1": queue it when D is not connected (OFFER, ANSWER, CANDIDATE); "0": drop it
-- ARGV[7]  most messages queued per id      ARGV[8]  most bytes queued per id
-- ARGV[9]  lifetime of the queue in ms (refreshed by each message queued)
--
-- Returns  {"sent", N}    D is a member and not away: the signal event went to node N's channel
--          {"queued", n}  appended to P:{R}:pjq:D ("F FRAME"); n messages wait for D now
--          {"dropped"}    D is not connected and ARGV[6] is "0": nothing written
--          {"full"}       the count or byte bound would be passed: nothing written
--
-- Does: SPUBLISH {"t":"signal","room":R,"from":F,"to":D,"data":FRAME} (the native signal path),
-- or RPUSH to P:{R}:pjq:D and INCRBY P:{R}:pjqb:D, both PEXPIRE ARGV[9].
-- Does not: check F (its node did), touch members or figures.

local P, R, F, D, frame = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] or ''
local queue_it, max, maxbytes, life = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8]),
    tonumber(ARGV[9])
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR pj_send: KEYS[1] must be ' .. members)
end
if F == '' or D == '' or frame == '' or not max or not maxbytes or not life or life < 1 then
    return redis.error_reply('ERR pj_send: bad arguments')
end

--@include lib/room.lua

local rec = redis.call('HGET', members, D)
if rec and redis.call('HEXISTS', base .. 'away', D) == 0 then
    local n = node_of(rec)
    if n then
        redis.call('SPUBLISH', bucket .. 'node:' .. n, '{"t":"signal","room":' .. cjson.encode(R) ..
            ',"from":' .. cjson.encode(F) .. ',"to":' .. cjson.encode(D) .. ',"data":' .. frame ..
            '}')
        return {'sent', n}
    end
end
if not queue_it then
    return {'dropped'}
end
local q, qb = pj_queue(D)
local item = F .. ' ' .. frame
local bytes = tonumber(redis.call('GET', qb) or '0') or 0
if redis.call('LLEN', q) >= max or bytes + #item > maxbytes then
    return {'full'}
end
local n = redis.call('RPUSH', q, item)
redis.call('INCRBY', qb, #item)
redis.call('PEXPIRE', q, int(life))
redis.call('PEXPIRE', qb, int(life))
return {'queued', n}
