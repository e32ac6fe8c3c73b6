#!lua
-- room_check: the admin recomputes room R's figures from its sets and repairs what differs.
--
-- KEYS[1]  P:{R}:members (routes the call to the room's slot; must match ARGV[1], ARGV[2])
-- KEYS[2]  P:{T}:stats, the room's bucket (T: the tag of the room's slot; lua/README.md)
-- ARGV[1]  prefix P           ARGV[2]  room R
--
-- Returns  {counter_fixes, half_link_fixes, degree_fixes, S1, S2, ...}
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
-- is deleted as room_remove deletes it (its members, nodes, degree and stats keys, the
-- bucket's rooms index and rooms figure; whatever figure it still held is taken off the bucket
-- and counted as a counter fix).
-- Does not: remove members without presence (it returns them); recompute the bucket's rooms or
-- other rooms (stats_check); find half links held by sockets that are not members (their keys
-- are only reachable by scanning); publish events (figures are not membership changes).

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

local all = redis.call('HGETALL', members)
if #all == 0 then
    local left = redis.call('HMGET', stats, 'members', 'links', 'linked')
    for i = 1, 3 do
        local v = num(left[i])
        if v ~= 0 then
            bucket_add(fields[i], -v)
            counter_fixes = counter_fixes + 1
        end
    end
    local nodes_left = redis.call('HGETALL', nodes)
    for i = 2, #nodes_left, 2 do
        if num(nodes_left[i]) ~= 0 then
            counter_fixes = counter_fixes + 1
        end
    end
    degree_fixes = redis.call('HLEN', degree)
    redis.call('DEL', members, nodes, degree, stats)
    if redis.call('SREM', bucket .. 'rooms', R) == 1 then
        bucket_add('rooms', -1)
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
    local f = fields[i]
    local v = tonumber(cur[i] or '0')
    if v ~= truth[f] then
        redis.call('HSET', stats, f, int(truth[f]))
        bucket_add(f, int(truth[f] - (v or 0)))
        counter_fixes = counter_fixes + 1
    end
end
if not tonumber(cur[4] or '') then
    redis.call('HSET', stats, 'seq', int(clock_seq()))
    counter_fixes = counter_fixes + 1
end
if redis.call('SADD', bucket .. 'rooms', R) == 1 then
    bucket_add('rooms', 1)
    counter_fixes = counter_fixes + 1
end

local reply = {counter_fixes, half_fixes, degree_fixes}
for _, S in ipairs(without_presence) do
    reply[#reply + 1] = S
end
return reply
