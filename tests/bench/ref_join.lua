#!lua
-- ref_join: the reference script for the state-change benchmark (not used by Switchboard).
-- The same kinds and number of Redis calls as lua/room_join.lua for a small room (reads, a
-- record, a presence key with PX, counters, the socket index, a JSON event published to the
-- room's nodes, the member list returned), on keys that repeat so that redis-benchmark can run
-- it at any rate with -r. It checks nothing that could refuse, so every call does the full work.
--
-- KEYS[1]  P:{R}:members (P and R are read from it: redis-benchmark draws a different number
--          for each __rand_int__ of a command, so R cannot be passed twice)
-- ARGV[1]  socket S   ARGV[2]  node N   ARGV[3]  meta (a JSON object)   ARGV[4]  TTL in ms
-- Returns  {"ok", seq, number of member fields}

local P, R = string.match(KEYS[1], '^(.-):{(.-)}:members$')
if not P then
    return redis.error_reply('ERR ref_join: KEYS[1] must be P:{R}:members')
end
local S, N, meta, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local base = P .. ':{' .. R .. '}:'
local members = KEYS[1]
local presence = base .. 'presence:' .. S
redis.call('HGET', members, S)
redis.call('EXISTS', presence)
redis.call('HLEN', members)
local rec = '{"node":' .. cjson.encode(N) .. ',"epoch":"0","meta":' .. meta .. '}'
redis.call('HSET', members, S, rec)
redis.call('SET', presence, N, 'PX', ttl)
redis.call('HINCRBY', base .. 'nodes', N, 1)
redis.call('SADD', P .. ':node:' .. N .. ':sockets', R .. ' ' .. S)
redis.call('HINCRBY', base .. 'stats', 'members', 1)
redis.call('HINCRBY', P .. ':stats', 'members', 1)
local seq = redis.call('HINCRBY', base .. 'stats', 'seq', 1)
local event = '{"t":"join","room":' .. cjson.encode(R) .. ',"seq":' .. string.format('%d', seq) ..
    ',"id":' .. cjson.encode(S) .. ',"node":' .. cjson.encode(N) .. ',"meta":' .. meta .. '}'
for _, node in ipairs(redis.call('HKEYS', base .. 'nodes')) do
    redis.call('PUBLISH', P .. ':node:' .. node, event)
end
local all = redis.call('HGETALL', members)
return {'ok', seq, #all}
