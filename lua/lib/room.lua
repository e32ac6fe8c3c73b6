-- lib/room.lua: helpers of the room scripts, written once. Redis scripts cannot include each
-- other, so cmake/embed.cmake replaces a script's line "--@include lib/room.lua" with this
-- file (tests/lua/conftest.py does the same): what the tests load is what ships. The line
-- stands after the legend, so "#!lua" stays the script's first line. Expects the including
-- script to have defined P (prefix), R (room) and base (P:{R}:) before it, and KEYS[2] to be
-- the room's bucket P:{T}:stats (lua/README.md: T is a tag of the room's slot on a Redis
-- Cluster, "all" on a single Redis). Defines bucket (P:{T}:) and local functions; it writes
-- nothing by itself.

-- Why a bucket: a script may touch the keys of one slot only, so the figures and indexes that
-- span rooms (stats, rooms, a node's sockets, the node channels) are kept per bucket, in the
-- room's own slot; the admin sums the buckets.
local bucket = string.sub(KEYS[2] or '', 1, -6)
if string.sub(KEYS[2] or '', -6) ~= ':stats' or string.sub(bucket, 1, #P + 3) ~= P .. ':{#' or
    string.sub(bucket, -2) ~= '}:' then
    return redis.error_reply('ERR KEYS[2] must be the room\'s bucket ' .. P .. ':{T}:stats')
end
local gstats = KEYS[2]

-- PeerJS (docs/peerjs.md): the ids of PeerJS key K are the members of the room "~pj.K". Its
-- share of the bucket's members, links and away is also kept in pj_members, pj_links and
-- pj_away, changed with the totals in the same call, so native = total - pj_* never drifts.
local pj_room = string.sub(R, 1, 4) == '~pj.'
local pj_fields = {members = 'pj_members', links = 'pj_links', away = 'pj_away'}

-- The PeerJS messages waiting for id D: the list P:{R}:pjq:D ("F FRAME" items) and its byte
-- count P:{R}:pjqb:D.
local function pj_queue(D)
    return base .. 'pjq:' .. D, base .. 'pjqb:' .. D
end

-- Half S->B added (1) or already there (0). In a PeerJS room the reverse index
-- P:{R}:rlinks:B (who holds a half towards B) follows, so a departure finds the halves towards
-- the leaver without walking the key's members, who may be thousands (room_remove).
local function half_add(S, B)
    local added = redis.call('SADD', base .. 'links:' .. S, B)
    if pj_room then
        redis.call('SADD', base .. 'rlinks:' .. B, S)
    end
    return added
end

-- Half S->B removed (1) or not there (0), with its reverse entry.
local function half_del(S, B)
    if pj_room then
        redis.call('SREM', base .. 'rlinks:' .. B, S)
    end
    return redis.call('SREM', base .. 'links:' .. S, B)
end

-- HINCRBY of a bucket figure (and of its PeerJS share for a PeerJS room).
local function bucket_add(field, delta)
    redis.call('HINCRBY', gstats, field, delta)
    if pj_room and pj_fields[field] then
        redis.call('HINCRBY', gstats, pj_fields[field], delta)
    end
end

-- A slot being migrated (lua/README.md, "Slot migrations"): the room's keys may be split
-- between the source and the target, and Redis checks only KEYS, not the names derived here.
-- The source refuses a key that is not there ("non local key") after earlier writes stood, and
-- the target (after ASKING) takes a key still on the source for missing. So nothing runs while
-- the slot migrates: P:{R}:moving never exists, and only a migrating source refuses to look
-- it up. TRYAGAIN: the caller retries until the slot has moved (the node never sends a script
-- to an importing target).
if type(redis.pcall('EXISTS', base .. 'moving')) == 'table' then
    return redis.error_reply('TRYAGAIN ' .. R .. ': its slot is being migrated')
end

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

-- SPUBLISH event to node n's channel of this bucket, P:{T}:node:n (sharded pub/sub: on a
-- cluster the message stays on the room's shard).
-- When nobody receives it (node n's subscription is moving with the slot, its pub/sub
-- connection is reconnecting, or n is dead), the event is also kept in n's backlog of the
-- bucket, P:{T}:node:n:backlog (at most 1024, for 10 s), which n replays when its subscription
-- is back, before it re-reads the rooms: events of that gap are then told, not just the
-- difference (lua/README.md, "Slot migrations").
local function publish_to(n, event)
    local channel = bucket .. 'node:' .. n
    if redis.call('SPUBLISH', channel, event) == 0 then
        local backlog = channel .. ':backlog'
        redis.call('RPUSH', backlog, event)
        redis.call('LTRIM', backlog, -1024, -1)
        redis.call('PEXPIRE', backlog, 10000)
    end
end

-- Publishes event to every node of the room (P:{R}:nodes).
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

-- Creates the room (it has no member yet): the bucket's rooms index and rooms figure, and a seq started at the
-- clock. Why time based: a room deleted and created again must not reuse a sequence number a
-- node may still hold for it. Each change takes more than a microsecond, so the old sequence
-- never got past the clock; the new one starts above it (unless the clock steps back).
local function open_room()
    if redis.call('SADD', bucket .. 'rooms', R) == 1 then
        bucket_add('rooms', 1)
    end
    local seq0 = clock_seq()
    local old = tonumber(redis.call('HGET', base .. 'stats', 'seq') or '0') or 0
    if old < seq0 then
        redis.call('HSET', base .. 'stats', 'seq', int(seq0))
    end
end

-- The bucket's index of the sockets node N hosts: P:{T}:node:N:sockets.
local function node_index(N)
    return bucket .. 'node:' .. N .. ':sockets'
end

-- Socket S of node N is alive: presence (PX ttl) and N's socket index entry "R S". (N's place
-- in the admin's reap index P:nodes is kept by its heartbeat: that key is in another slot.)
local function claim(S, N, ttl)
    redis.call('SET', base .. 'presence:' .. S, N, 'PX', int(ttl))
    redis.call('SADD', node_index(N), R .. ' ' .. S)
end

-- Adds the record of S (node N, epoch E, meta: JSON object text kept verbatim), the room's
-- node count, the members counters (room and bucket), seq + 1, and publishes the "join" event
-- to every node of the room, N included. Returns the new seq.
local function add_member(S, N, E, meta)
    local rec = '{"node":' .. cjson.encode(N) .. ',"epoch":' .. cjson.encode(E) ..
        ',"meta":' .. meta .. '}'
    redis.call('HSET', base .. 'members', S, rec)
    redis.call('HINCRBY', base .. 'nodes', N, 1)
    redis.call('HINCRBY', base .. 'stats', 'members', 1)
    bucket_add('members', 1)
    local seq = redis.call('HINCRBY', base .. 'stats', 'seq', 1)
    publish_room('{"t":"join","room":' .. cjson.encode(R) .. ',"seq":' .. int(seq) ..
        ',"id":' .. cjson.encode(S) .. ',"node":' .. cjson.encode(N) .. ',"meta":' .. meta .. '}')
    return seq
end

-- The link S-B formed (delta 1) or ended (delta -1): both ends' degrees (a field at 0 is
-- deleted), links, and linked when a degree goes 0<->1, in the room and its bucket.
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
    bucket_add('links', delta)
    if linked ~= 0 then
        redis.call('HINCRBY', base .. 'stats', 'linked', linked)
        bucket_add('linked', linked)
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

-- ---- session resume (lua/README.md, "Session resume") ----

-- Redis's clock in milliseconds (deadlines of away sockets).
local function clock_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The records of a member list (HGETALL members) as listed to nodes (room_join, room_read,
-- session_resume): an away member's record gains "away":1 before its closing brace, so a view
-- built from a read knows who is away. Changes `all` in place and returns it.
local function listed(all)
    local away = redis.call('HKEYS', base .. 'away')
    if #away == 0 then
        return all
    end
    local set = {}
    for _, s in ipairs(away) do
        set[s] = true
    end
    for i = 1, #all - 1, 2 do
        if set[all[i]] then
            all[i + 1] = string.sub(all[i + 1], 1, -2) .. ',"away":1}'
        end
    end
    return all
end

-- S's resume record {"h":sha256 hex of its token,"o":origin,"u":JWT subject,"g":grace ms}, or
-- nil.
local function resume_of(S)
    local raw = redis.call('HGET', base .. 'resume', S)
    if not raw then
        return nil
    end
    local ok, r = pcall(cjson.decode, raw)
    if ok and type(r) == 'table' and type(r.h) == 'string' then
        return r
    end
    return nil
end

local function set_resume(S, h, o, u, g)
    redis.call('HSET', base .. 'resume', S,
        cjson.encode({h = h, o = o, u = u, g = tonumber(g) or 0}))
end

-- S's away entry: deadline (ms, Redis clock) and the members at the time it went away, or nil.
local function away_of(S)
    local raw = redis.call('HGET', base .. 'away', S)
    if not raw then
        return nil
    end
    local ids = {}
    for w in string.gmatch(raw, '%S+') do
        ids[#ids + 1] = w
    end
    return {deadline = tonumber(table.remove(ids, 1)) or 0, members = ids}
end

-- Marks member S (its presence held by node `holder`) away for grace ms: the away entry, the
-- bucket's deadline index P:{T}:away, the away counters of the room and the bucket, the
-- presence key re-set to lapse at the deadline (so a pass of the admin finds it then even when
-- no node is left to expire it), seq + 1 and the "away" event. Returns seq, deadline.
local function mark_away(S, holder, grace)
    local deadline = clock_ms() + grace
    -- A PeerJS reclaim tells no joined/left (and the key's room may hold thousands of ids).
    local ids = pj_room and {} or redis.call('HKEYS', base .. 'members')
    redis.call('HSET', base .. 'away', S, int(deadline) .. ' ' .. table.concat(ids, ' '))
    redis.call('ZADD', bucket .. 'away', int(deadline), R .. ' ' .. S)
    redis.call('HINCRBY', base .. 'stats', 'away', 1)
    bucket_add('away', 1)
    redis.call('SET', base .. 'presence:' .. S, holder, 'PX', int(grace))
    local seq = redis.call('HINCRBY', base .. 'stats', 'seq', 1)
    publish_room('{"t":"away","room":' .. cjson.encode(R) .. ',"seq":' .. int(seq) ..
        ',"id":' .. cjson.encode(S) .. '}')
    return seq, deadline
end

-- Member S (its record rec) is held by node N, epoch E, from now on, its meta kept: the
-- record, the room's node counts and the socket index entry move from its old node (a takeover:
-- session_resume, pj_claim). Returns the old node (nil when unreadable) and the meta text.
local function move_member(S, rec, N, E)
    local old = node_of(rec)
    local at = string.find(rec, ',"meta":', 1, true)
    local meta = at and string.sub(rec, at + 8, -2) or '{}'
    redis.call('HSET', base .. 'members', S, '{"node":' .. cjson.encode(N) .. ',"epoch":' ..
        cjson.encode(E) .. ',"meta":' .. meta .. '}')
    if old ~= N then
        if old then
            if redis.call('HINCRBY', base .. 'nodes', old, -1) <= 0 then
                redis.call('HDEL', base .. 'nodes', old)
            end
            redis.call('SREM', node_index(old), R .. ' ' .. S)
        end
        redis.call('HINCRBY', base .. 'nodes', N, 1)
    end
    return old, meta
end

-- Clears S's away state (entry, index, queue, counters). 1 when S was away.
local function drop_away(S)
    if redis.call('HDEL', base .. 'away', S) == 0 then
        return 0
    end
    redis.call('ZREM', bucket .. 'away', R .. ' ' .. S)
    redis.call('DEL', base .. 'queue:' .. S)
    redis.call('HDEL', base .. 'qbytes', S)
    redis.call('HINCRBY', base .. 'stats', 'away', -1)
    bucket_add('away', -1)
    return 1
end
