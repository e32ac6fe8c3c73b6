#!lua
-- room_check: the admin recomputes room R's figures from its sets and repairs what differs.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R
-- ARGV[3]  slice (optional): a room of more members than this is checked a slice at a time
--          (below); absent or 0: the whole room in this call, whatever its size
-- ARGV[4]  the HSCAN cursor over P:{R}:members of the slice to check ("0": the first; with
--          ARGV[3])
--
-- Returns  {counter_fixes, half_link_fixes, degree_fixes, S1, S2, ...} without ARGV[3];
--          {counter_fixes, half_link_fixes, degree_fixes, cursor, S1, S2, ...} with it (0
--          included), where cursor is the next slice's ("0": the room is done; always "0" for
--          a whole room). A cursor is the HSCAN of one server: after a failover or a slot move
--          mid-room the next slices may skip or repeat members, which the next pass covers.
--          counter_fixes    wrong fields of P:{R}:stats (members, links, linked, a missing seq),
--                           of P:{R}:nodes, a missing socket index entry, R missing from its
--                           bucket's rooms index P:{T}:rooms
--          half_link_fixes  halves removed because they pointed at a non-member (or at S itself);
--                           in a PeerJS room also reverse index entries (rlinks) fixed
--          degree_fixes     wrong, missing or extra fields of P:{R}:degree
--          S1, S2, ...      members without a presence key, for the admin to reap with
--                           room_remove "expired" (re-checked there)
--
-- Does: truth = HLEN members, the links formed by the members' halves, each member's degree,
-- per-node counts from the records. Every wrong room figure is rewritten and the same delta is
-- applied to the bucket P:{T}:stats, so the bucket stays the sum of its rooms. An empty room
-- is deleted as room_remove deletes it (its members, nodes, degree and stats keys, its resume,
-- away and qbytes keys with the away entries' queues and deadline index entries, the bucket's
-- rooms index and rooms figure; whatever figure it still held, away included, is taken off the
-- bucket and counted as a counter fix).
-- Does not: remove members without presence (it returns them); recompute the bucket's rooms or
-- other rooms (stats_check); find half links held by sockets that are not members (their keys
-- are only reachable by scanning); publish events (figures are not membership changes).
--
-- A room of more than ARGV[3] members is checked a slice at a time: each call takes the members
-- one HSCAN step returns (about ARGV[3]) and does what needs no other member's state: the
-- socket index entry, the presence check, halves towards non-members or S itself (HEXISTS),
-- and in a PeerJS room the reverse index entries of S and of its halves. The first slice
-- (cursor "0") also checks the members figure against HLEN, the seq and the rooms index; a first step
-- that returns every member (a hash small enough to be one listpack) runs the whole check
-- instead. The room-wide
-- figures (links, linked, degree, node counts) are not recounted for such a room: they are kept
-- by the scripts that change them, and recounting them needs every member at once. Why: a whole
-- check costs about 13 us per member inside Redis (a PeerJS key of 50,000 ids: 629 ms, every
-- pass), and Redis serves nobody else meanwhile.

local P, R = ARGV[1], ARGV[2]
local base = P .. ':{' .. R .. '}:'
local members = base .. 'members'
if KEYS[1] ~= members then
    return redis.error_reply('ERR room_check: KEYS[1] must be ' .. members)
end

--@include lib/room.lua
local function num(v) return tonumber(v or '0') or 0 end

local stats = base .. 'stats'
local degree = base .. 'degree'
local nodes = base .. 'nodes'
local fields = {'members', 'links', 'linked'}
local counter_fixes, half_fixes, degree_fixes = 0, 0, 0

-- Room figure f set to want when stats holds another value (have, as HGET read it), and the
-- bucket moved by the same delta: 1 when it was fixed.
local function fix_figure(f, want, have)
    local v = tonumber(have or '0')
    if v == want then
        return 0
    end
    redis.call('HSET', stats, f, int(want))
    bucket_add(f, int(want - (v or 0)))
    return 1
end

-- A room with members is in its bucket's rooms index: 1 when it had to be added.
local function fix_listed()
    if redis.call('SADD', bucket .. 'rooms', R) == 1 then
        bucket_add('rooms', 1)
        return 1
    end
    return 0
end

local slice = tonumber(ARGV[3] or '0') or 0
local cursor = ARGV[4] or '0'
local with_cursor = ARGV[3] ~= nil -- the reply carries a cursor (always "0" for a whole room)
local step = slice > 0 and (cursor ~= '0' or redis.call('HLEN', members) > slice) and
                 redis.call('HSCAN', members, cursor, 'COUNT', slice)
-- A first step that returned the whole room (a small hash is one listpack, which HSCAN returns
-- at once): the whole check instead, with the room-wide figures.
if step and not (cursor == '0' and step[1] == '0') then
    local flat, lapsed = step[2], {}
    if cursor == '0' then
        local cur = redis.call('HMGET', stats, 'members', 'seq')
        counter_fixes = counter_fixes + fix_figure('members', redis.call('HLEN', members), cur[1]) +
                            fix_listed()
        if not tonumber(cur[2] or '') then
            redis.call('HSET', stats, 'seq', int(clock_seq()))
            counter_fixes = counter_fixes + 1
        end
    end
    for i = 1, #flat, 2 do
        local S = flat[i]
        local N = node_of(flat[i + 1])
        if N and redis.call('SADD', node_index(N), R .. ' ' .. S) == 1 then
            counter_fixes = counter_fixes + 1
        end
        if redis.call('EXISTS', base .. 'presence:' .. S) == 0 then
            lapsed[#lapsed + 1] = S
        end
        for _, B in ipairs(redis.call('SMEMBERS', base .. 'links:' .. S)) do
            if B == S or redis.call('HEXISTS', members, B) == 0 then
                half_del(S, B)
                half_fixes = half_fixes + 1
            elseif pj_room and redis.call('SADD', base .. 'rlinks:' .. B, S) == 1 then
                half_fixes = half_fixes + 1
            end
        end
        if pj_room then
            local key = base .. 'rlinks:' .. S
            for _, X in ipairs(redis.call('SMEMBERS', key)) do
                if redis.call('HEXISTS', members, X) == 0 or
                    redis.call('SISMEMBER', base .. 'links:' .. X, S) == 0 then
                    redis.call('SREM', key, X)
                    half_fixes = half_fixes + 1
                end
            end
        end
    end
    local reply = {counter_fixes, half_fixes, 0, step[1]}
    for _, S in ipairs(lapsed) do
        reply[#reply + 1] = S
    end
    return reply
end

local all = redis.call('HGETALL', members)
if #all == 0 then
    -- As room_remove deletes an empty room: every figure it still holds (away included) off
    -- the bucket, and its resume state with it (records, away entries and their deadline
    -- index entries, queues), which no member owns any more.
    local figures = {'members', 'links', 'linked', 'away'}
    local left = redis.call('HMGET', stats, 'members', 'links', 'linked', 'away')
    for i = 1, 4 do
        local v = num(left[i])
        if v ~= 0 then
            bucket_add(figures[i], -v)
            counter_fixes = counter_fixes + 1
        end
    end
    for _, S in ipairs(redis.call('HKEYS', base .. 'away')) do
        redis.call('ZREM', bucket .. 'away', R .. ' ' .. S)
        redis.call('DEL', base .. 'queue:' .. S)
    end
    local nodes_left = redis.call('HGETALL', nodes)
    for i = 2, #nodes_left, 2 do
        if num(nodes_left[i]) ~= 0 then
            counter_fixes = counter_fixes + 1
        end
    end
    degree_fixes = redis.call('HLEN', degree)
    redis.call('DEL', members, nodes, degree, stats, base .. 'resume', base .. 'away',
        base .. 'qbytes')
    if redis.call('SREM', bucket .. 'rooms', R) == 1 then
        bucket_add('rooms', -1)
    end
    if with_cursor then
        return {counter_fixes, 0, degree_fixes, '0'}
    end
    return {counter_fixes, 0, degree_fixes}
end

-- Members, their nodes, presence.
local ids = {}
local is_member = {}
local per_node = {}
local without_presence = {}
for i = 1, #all, 2 do
    local S = all[i]
    ids[#ids + 1] = S
    is_member[S] = true
    local N = node_of(all[i + 1])
    if N then
        per_node[N] = (per_node[N] or 0) + 1
        if redis.call('SADD', node_index(N), R .. ' ' .. S) == 1 then
            counter_fixes = counter_fixes + 1
        end
    end
    if redis.call('EXISTS', base .. 'presence:' .. S) == 0 then
        without_presence[#without_presence + 1] = S
    end
end

-- Halves: drop those towards non-members; then formed links and degrees.
local halves = {}
for _, S in ipairs(ids) do
    local key = base .. 'links:' .. S
    local h = {}
    for _, B in ipairs(redis.call('SMEMBERS', key)) do
        if is_member[B] and B ~= S then
            h[B] = true
        else
            half_del(S, B)
            half_fixes = half_fixes + 1
        end
    end
    halves[S] = h
end
if pj_room then
    -- The reverse index: exactly who holds a half towards each member (O(links), not
    -- members x members: a PeerJS key may hold thousands of ids).
    local want = {}
    for S, h in pairs(halves) do
        for B in pairs(h) do
            want[B] = want[B] or {}
            want[B][S] = true
        end
    end
    for _, B in ipairs(ids) do
        local key = base .. 'rlinks:' .. B
        local w = want[B] or {}
        for _, S in ipairs(redis.call('SMEMBERS', key)) do
            if w[S] then
                w[S] = nil
            else
                redis.call('SREM', key, S)
                half_fixes = half_fixes + 1
            end
        end
        for S in pairs(w) do
            redis.call('SADD', key, S)
            half_fixes = half_fixes + 1
        end
    end
end
local deg = {}
local degree_sum, linked = 0, 0
for _, S in ipairs(ids) do
    local d = 0
    for B in pairs(halves[S]) do
        if halves[B][S] then
            d = d + 1
        end
    end
    deg[S] = d
    degree_sum = degree_sum + d
    if d > 0 then
        linked = linked + 1
    end
end
local truth = {members = #ids, links = degree_sum / 2, linked = linked}

-- Makes hash key hold exactly the positive counts of want (field -> count); returns how many
-- fields it had to delete, change or add.
local function repair_counts(key, want)
    local fixes, seen = 0, {}
    local cur = redis.call('HGETALL', key)
    for i = 1, #cur, 2 do
        local f, v = cur[i], cur[i + 1]
        seen[f] = true
        local w = want[f] or 0
        if w == 0 then
            redis.call('HDEL', key, f)
            fixes = fixes + 1
        elseif tonumber(v) ~= w then
            redis.call('HSET', key, f, int(w))
            fixes = fixes + 1
        end
    end
    for f, w in pairs(want) do
        if w > 0 and not seen[f] then
            redis.call('HSET', key, f, int(w))
            fixes = fixes + 1
        end
    end
    return fixes
end

-- Degree hash: exactly one field per member with a formed link.
degree_fixes = degree_fixes + repair_counts(degree, deg)
-- Node counts: exactly one field per node hosting members.
counter_fixes = counter_fixes + repair_counts(nodes, per_node)

-- Room figures, and the same deltas on the bucket.
local cur = redis.call('HMGET', stats, 'members', 'links', 'linked', 'seq')
for i = 1, 3 do
    counter_fixes = counter_fixes + fix_figure(fields[i], truth[fields[i]], cur[i])
end
if not tonumber(cur[4] or '') then
    redis.call('HSET', stats, 'seq', int(clock_seq()))
    counter_fixes = counter_fixes + 1
end
counter_fixes = counter_fixes + fix_listed()

local reply = {counter_fixes, half_fixes, degree_fixes}
if with_cursor then
    reply[4] = '0'
end
for _, S in ipairs(without_presence) do
    reply[#reply + 1] = S
end
return reply
