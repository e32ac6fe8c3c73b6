-- lib/room.lua: helpers of the room scripts, written once. Redis scripts cannot include each
-- other, so cmake/embed.cmake replaces a script's line "--@include lib/room.lua" with this
-- file (tests/lua/conftest.py does the same): what the tests load is what ships. The line
-- stands after the legend, so "#!lua" stays the script's first line. Expects the including
-- script to have defined P (prefix), R (room) and base (P:{R}:) before it. Defines only
-- local functions: it writes nothing by itself.

-- A number as Redis text: %d, because tostring prints large integers in exponent form.
local function int(n) return string.format('%d', n) end

-- The node id of a member record (JSON text), or nil when the record is not readable.
local function node_of(rec)
    local ok, decoded = pcall(cjson.decode, rec)
    if ok and type(decoded) == 'table' and type(decoded.node) == 'string' then
        return decoded.node
    end
    return nil
end

-- PUBLISH event to node n's channel P:node:n.
local function publish_to(n, event)
    redis.call('PUBLISH', P .. ':node:' .. n, event)
end

-- PUBLISH event to every node of the room (P:{R}:nodes).
local function publish_room(event)
    for _, n in ipairs(redis.call('HKEYS', base .. 'nodes')) do
        publish_to(n, event)
    end
end

-- Redis's clock in microseconds since the epoch: a fresh room's first seq. (About 1.7e15,
-- exact in a Lua double until 2255.)
local function clock_seq()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Creates the room (it has no member yet): P:rooms, P:stats rooms, and a seq started at the
-- clock. Why time based: a room deleted and created again must not reuse a sequence number a
-- node may still hold for it. Each change takes more than a microsecond, so the old sequence
-- never got past the clock; the new one starts above it (unless the clock steps back).
local function open_room()
    if redis.call('SADD', P .. ':rooms', R) == 1 then
        redis.call('HINCRBY', P .. ':stats', 'rooms', 1)
    end
    local seq0 = clock_seq()
    local old = tonumber(redis.call('HGET', base .. 'stats', 'seq') or '0') or 0
    if old < seq0 then
        redis.call('HSET', base .. 'stats', 'seq', int(seq0))
    end
end

-- Socket S of node N is alive: presence (PX ttl), N's socket index entry "R S", and N in the
-- admin's reap index P:nodes.
local function claim(S, N, ttl)
    redis.call('SET', base .. 'presence:' .. S, N, 'PX', int(ttl))
    redis.call('SADD', P .. ':node:' .. N .. ':sockets', R .. ' ' .. S)
    redis.call('SADD', P .. ':nodes', N)
end

-- Adds the record of S (node N, epoch E, meta: JSON object text kept verbatim), the room's
-- node count, the members counters (room and P:stats), seq + 1, and publishes the "join" event
-- to every node of the room, N included. Returns the new seq.
local function add_member(S, N, E, meta)
    local rec = '{"node":' .. cjson.encode(N) .. ',"epoch":' .. cjson.encode(E) ..
        ',"meta":' .. meta .. '}'
    redis.call('HSET', base .. 'members', S, rec)
    redis.call('HINCRBY', base .. 'nodes', N, 1)
    redis.call('HINCRBY', base .. 'stats', 'members', 1)
    redis.call('HINCRBY', P .. ':stats', 'members', 1)
    local seq = redis.call('HINCRBY', base .. 'stats', 'seq', 1)
    publish_room('{"t":"join","room":' .. cjson.encode(R) .. ',"seq":' .. int(seq) ..
        ',"id":' .. cjson.encode(S) .. ',"node":' .. cjson.encode(N) .. ',"meta":' .. meta .. '}')
    return seq
end

-- The link S-B formed (delta 1) or ended (delta -1): both ends' degrees (a field at 0 is
-- deleted), links, and linked when a degree goes 0<->1, in the room and P:stats.
local function count_link(S, B, delta)
    local degree = base .. 'degree'
    local linked = 0
    for _, x in ipairs({S, B}) do
        local d = redis.call('HINCRBY', degree, x, delta)
        if delta > 0 and d == 1 then
            linked = linked + 1
        elseif delta < 0 then
            if d == 0 then
                linked = linked - 1
            end
            if d <= 0 then
                redis.call('HDEL', degree, x)
            end
        end
    end
    redis.call('HINCRBY', base .. 'stats', 'links', delta)
    redis.call('HINCRBY', P .. ':stats', 'links', delta)
    if linked ~= 0 then
        redis.call('HINCRBY', base .. 'stats', 'linked', linked)
        redis.call('HINCRBY', P .. ':stats', 'linked', linked)
    end
end

-- Publishes {"t":"link",...} for S-B, stamped with the room's current seq (a link is not a
-- membership change), to node na and node nb (once when they are the same; nil is skipped).
local function announce_link(S, B, state, na, nb)
    local seq = tonumber(redis.call('HGET', base .. 'stats', 'seq') or '0') or 0
    local event = '{"t":"link","room":' .. cjson.encode(R) .. ',"seq":' .. int(seq) ..
        ',"a":' .. cjson.encode(S) .. ',"b":' .. cjson.encode(B) ..
        ',"state":' .. cjson.encode(state) .. '}'
    if na then
        publish_to(na, event)
    end
    if nb and nb ~= na then
        publish_to(nb, event)
    end
end
