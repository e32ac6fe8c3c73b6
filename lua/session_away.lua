#!lua
-- session_away: socket S of room R lost its connection (no close frame, reset, ping timeout,
-- drain): it stays a member, with its links, for its resume grace.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R             ARGV[3]  socket id S
-- ARGV[4]  node id N: the caller, which must hold S's presence key
-- ARGV[5]  SHA-256 (hex) of the resume token N issued for S (its incarnation)
--
-- Returns  {"ok", seq, deadline_ms}  S is away until deadline_ms (Redis clock); seq of the
--                    "away" event (S already away: the same, nothing written)
--          {"gone"}  S is not a member, its presence is not N's, or its resume record holds
--                    another token (it was resumed, taken over): nothing written
--          {"none"}  S has no resume record or a grace of 0: nothing written (the caller
--                    removes it with room_remove "disconnect")
--
-- Does: the away entry P:{R}:away (deadline and the members at that moment, for the resumed
-- reply's joined/left), the bucket's deadline index P:{T}:away ("R S" scored by deadline),
-- stats away + 1 (room and bucket), the presence key re-set to lapse at the deadline, seq + 1
-- and the "away" event to every node of the room.
-- Does not: touch links, the record or the socket index (S is still a member).

local P, R, S, N, H = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] or ''
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR session_away: KEYS[1] must be ' .. members)
end
if S == '' or N == '' then
    return redis.error_reply('ERR session_away: bad arguments')
end

--@include lib/room.lua

local rec = redis.call('HGET', members, S)
if not rec or redis.call('GET', base .. 'presence:' .. S) ~= N then
    return {'gone'}
end
local r = resume_of(S)
if not r or (r.g or 0) <= 0 then
    return {'none'}
end
if r.h ~= H then
    return {'gone'}
end
local away = away_of(S)
if away then
    return {'ok', tonumber(redis.call('HGET', base .. 'stats', 'seq') or '0'), away.deadline}
end
local seq, deadline = mark_away(S, N, r.g)
return {'ok', seq, deadline}
