// End to end, PeerJS compatibility (issue 16) with the real `peerjs` browser client (npm
// peerjs, pinned in package.json; its dist/peerjs.min.js is served to the pages by this test,
// with peerjs_page.js, from a static server on 127.0.0.1). Two headless Chromium pages each
// create `new Peer({host, port, path: "/peerjs", key: "peerjs"})` with no id, through the load
// balancer of deploy/cluster.sh, and must land on different nodes (read from Redis: the node
// socket index P:{#}:node:N:sockets holds "~pj.peerjs ID"). Then, each step asserting:
//   - both get `open` with distinct server-assigned ids (UUID v4 from GET /peerjs/peerjs/id),
//     the id fetch and the WebSocket went through the balancer;
//   - peer.connect(): a DataConnection, several messages each way, exact and in order;
//   - peer.call() with Chromium's fake camera and microphone: the callee answers, both get the
//     remote stream with live audio and video tracks, and RTP bytes arrive on both;
//   - the admin counts the PeerJS users, no link before a connection and one after
//     (mesh-status "peerjs", or, until the admin has it, the bucket's pj_members / pj_links);
//   - peer.connect("no-such-id-xyz") gives the client's `peer-unavailable` error (the server's
//     EXPIRE, not before --peerjs-expire-timeout-ms) and the Peer stays open;
//   - a connect() to an id nobody holds yet, claimed a second later by a third page: the
//     connection opens and no peer-unavailable follows;
//   - a third page asking for alice's id gets the client's `unavailable-id` error (ID-TAKEN),
//     alice's Peer notices nothing;
//   - kill -9 of one page's node (pid from cluster.sh's state dir): that Peer gets
//     `disconnected`, the page calls peer.reconnect(), it is `open` again with the same id on
//     another node through the balancer; the DataConnection made before the kill still carries
//     messages both ways, and a new connect() from the other page to the reconnected id works;
//   - the admin still counts 2 users and 1 link; closing one page makes it 1 user and 0 links,
//     closing the other 0 users.
//
// Environment (run-e2e.sh sets them):
//   SB_E2E_URLS      the load balancer's base URL
//   SB_ADMIN_URL, SB_ADMIN_TOKEN   the admin
//   SB_CLUSTER_DIR   deploy/cluster.sh's state dir (pids/<node>, ports.env for Redis's port)
//   PEERJS_TARGET=reference  instead: against the reference server, peer 1.0.2 (from
//                    tests/bench/js/node_modules, `npm ci` there), started here on 127.0.0.1;
//                    the "kill" is that server dropping alice's WebSocket (a TCP reset) and
//                    the admin steps are skipped. This checks the test itself (run-e2e.sh
//                    --fake runs it so), it is not part of `make test`.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { meshStatus } from './demo_page.mjs';
import { FAKE_MEDIA_ARGS, ROOT, Steps, assert, closeBrowser, clusterEnv, nodePid, openBrowser, runSteps, screenshot, waitFor } from './lib.mjs';

const steps = new Steps();
const browsers = [];
const servers = [];
const KEY = 'peerjs';
const PJ_PATH = '/peerjs';
const MAX_RESTARTS = 3; // new Peers for bob when the balancer put him on alice's node
const MAX_RECONNECTS = 3; // reconnect() calls after the kill (one more when one lands badly)
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const HERE = path.join(ROOT, 'tests/browser');

function optionalClusterEnv(key) {
    try {
        return clusterEnv(key);
    } catch {
        return null;
    }
}

function env(name) {
    const v = process.env[name];
    return v && v.trim() ? v.trim() : null;
}

// Serves the page, the PeerJS bundle and peerjs_page.js on 127.0.0.1 (a port of its own: the
// balancer only forwards the node's routes). Resolves to its base URL.
function startPageServer() {
    const files = {
        '/peerjs.min.js': path.join(HERE, 'node_modules/peerjs/dist/peerjs.min.js'),
        '/peerjs_page.js': path.join(HERE, 'peerjs_page.js'),
    };
    const html = '<!doctype html><meta charset="utf-8"><title>PeerJS e2e</title>' +
        '<script src="/peerjs.min.js"></script><script src="/peerjs_page.js"></script><body>PeerJS e2e</body>';
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, 'http://x');
        if (url.pathname === '/') {
            res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
            res.end(html);
        } else if (files[url.pathname]) {
            res.writeHead(200, { 'Content-Type': 'text/javascript; charset=utf-8' });
            res.end(fs.readFileSync(files[url.pathname]));
        } else if (url.pathname === '/favicon.ico') {
            res.writeHead(204);
            res.end();
        } else {
            res.writeHead(404);
            res.end();
        }
    });
    servers.push(server);
    return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${server.address().port}`)));
}

// The reference PeerJS server (peer 1.0.2) on 127.0.0.1, path /peerjs: {url, clients (id ->
// its server-side client, whose getSocket() is the WebSocket)}.
async function startReference() {
    const module = path.join(ROOT, 'tests/bench/js/node_modules/peer/dist/module.mjs');
    assert(fs.existsSync(module), `${module} is missing: run npm ci in tests/bench/js`);
    const { PeerServer } = await import(module);
    const clients = new Map();
    return new Promise((resolve) => {
        const app = PeerServer({ host: '127.0.0.1', port: 0, path: PJ_PATH, key: KEY }, (server) => {
            servers.push(server);
            resolve({ url: `http://127.0.0.1:${server.address().port}`, clients });
        });
        app.on('connection', (client) => clients.set(client.getId(), client));
    });
}

// redis-cli against the cluster's Redis; resolves to its output lines.
function redisClient(clusterDir) {
    const ports = fs.readFileSync(path.join(clusterDir, 'ports.env'), 'utf8');
    const port = /^SB_REDIS_PORT=(\d+)$/m.exec(ports)?.[1];
    assert(port, `${clusterDir}/ports.env has no SB_REDIS_PORT`);
    const run = promisify(execFile);
    return async (...args) => {
        const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', port, ...args], { timeout: 5000 });
        return stdout.replace(/\n$/, '').split('\n');
    };
}

async function openPeerPage(name, pageUrl) {
    const u = { name, responses: [], sockets: [] };
    u.b = await openBrowser(name, null, { args: FAKE_MEDIA_ARGS });
    browsers.push(u.b);
    u.b.page.on('response', (r) => u.responses.push(r.url()));
    u.b.page.on('websocket', (ws) => u.sockets.push(ws.url()));
    await u.b.page.goto(pageUrl, { waitUntil: 'load' });
    return u;
}

const state = (u) => u.b.page.evaluate(() => window.pj.state());

// Waits for the n-th `kind` event of u's Peer (1-based); fails at once on an event of a kind
// in `bad` after the (n-1)-th `kind` one.
async function waitEvent(u, kind, { n = 1, timeoutMs = 15000, bad = ['error'] } = {}) {
    let last = null;
    let r;
    try {
        r = await waitFor(`${u.name}'s Peer to emit "${kind}" (#${n})`, async () => {
            last = await state(u);
            const of = last.events.filter((e) => e.kind === kind);
            if (of.length >= n) return { event: of[n - 1] };
            const since = n > 1 ? of[n - 2]?.at ?? 0 : 0;
            const wrong = last.events.find((e) => bad.includes(e.kind) && e.at >= since);
            return wrong ? { wrong } : null;
        }, { timeoutMs });
    } catch (e) {
        throw new Error(`${e.message}; events: ${JSON.stringify(last?.events)}`);
    }
    if (r.wrong) throw new Error(`${u.name}'s Peer emitted ${JSON.stringify(r.wrong)} before "${kind}" (#${n}); events: ${JSON.stringify(last.events)}`);
    return r.event;
}

// Creates a Peer on u's page (new Peer(id, options)): `id` null for one the server assigns.
function newPeer(u, target, id) {
    const t = new URL(target);
    return u.b.page.evaluate(([i, o]) => window.pj.start(i, o), [id, {
        host: t.hostname, port: Number(t.port), path: PJ_PATH, key: KEY, secure: false, debug: 1,
        // Loopback only: no STUN or TURN server (the default ones are on the Internet).
        config: { iceServers: [] },
    }]);
}

// A new Peer on u's page, open: with `id`, that id; else one the server assigns (a UUID v4).
async function startPeer(u, target, id = null) {
    await newPeer(u, target, id);
    const open = await waitEvent(u, 'open');
    u.id = (await state(u)).id;
    assert(open.id === u.id, `${u.name}: open gave ${open.id}, peer.id is ${u.id}`);
    if (id) assert(u.id === id, `${u.name}: asked for id ${id}, got ${u.id}`);
    else assert(UUID_V4.test(u.id), `${u.name}: server-assigned id ${u.id} is not a UUID v4`);
}

// The nodes of the cluster (cluster.sh's pids/node*) that hold `id` in their socket index.
async function nodesOf(ctx, id) {
    const found = [];
    for (const node of ctx.nodes) {
        const [r] = await ctx.redis('SISMEMBER', `${ctx.prefix}:{#}:node:${node}:sockets`, `~pj.${KEY} ${id}`);
        if (r === '1') found.push(node);
    }
    return found;
}

async function nodeOf(ctx, u) {
    const found = await waitFor(`${u.name}'s id ${u.id} in exactly one node's socket index`, async () => {
        const n = await nodesOf(ctx, u.id);
        return n.length === 1 ? n : null;
    }, { timeoutMs: 5000 });
    return found[0];
}

// The id fetches and WebSockets of u all went to `target` (the balancer), for `id`.
function wentThrough(u, target) {
    const t = new URL(target);
    const idFetches = u.responses.filter((x) => new URL(x).pathname === `${PJ_PATH}/${KEY}/id`);
    assert(idFetches.length > 0, `${u.name}: no GET ${PJ_PATH}/${KEY}/id seen (responses: ${u.responses.join(' ')})`);
    const wrong = idFetches.filter((x) => new URL(x).origin !== t.origin);
    assert(wrong.length === 0, `${u.name}: id fetched from ${wrong.join(' ')}, not ${t.origin}`);
    const ws = u.sockets.map((x) => new URL(x));
    assert(ws.length > 0, `${u.name}: no WebSocket seen`);
    const bad = ws.filter((w) => w.host !== t.host || w.pathname !== `${PJ_PATH}/peerjs` || w.searchParams.get('key') !== KEY);
    assert(bad.length === 0, `${u.name}: WebSocket(s) not to ws://${t.host}${PJ_PATH}/peerjs?key=${KEY}: ${bad.join(' ')}`);
}

// The DataConnection record of u with that connectionId, or (incoming) the one from `from`.
async function conn(u, { id, from }) {
    const s = await state(u);
    return s.conns.find((c) => (id ? c.id === id : c.incoming && c.peer === from));
}

// a connects to b: resolves to the connectionId once both ends are open.
async function connect(a, b) {
    const id = await a.b.page.evaluate((to) => window.pj.connect(to), b.id);
    await waitFor(`${a.name} -> ${b.name} DataConnection ${id} open on both ends`, async () => {
        const mine = await conn(a, { id });
        const theirs = (await state(b)).conns.find((c) => c.id === id);
        if (mine?.errors.length || theirs?.errors.length) throw new Error(`errors: ${JSON.stringify([mine?.errors, theirs?.errors])}`);
        return mine?.open && theirs?.open && theirs.incoming && theirs.peer === a.id;
    }, { timeoutMs: 20000 });
    return id;
}

// Sends `count` messages each way on DataConnection `id` (a is its opener) and checks that each
// end has received exactly `before` + these, in order. Returns a note.
async function exchange(a, b, id, tag, count, before = { a: [], b: [] }) {
    const fromA = Array.from({ length: count }, (_, i) => `${a.name}->${b.name} ${tag} ${i + 1}`);
    const fromB = Array.from({ length: count }, (_, i) => `${b.name}->${a.name} ${tag} ${i + 1}`);
    await a.b.page.evaluate(([c, m]) => window.pj.send(c, m), [id, fromA]);
    await b.b.page.evaluate(([c, m]) => window.pj.send(c, m), [id, fromB]);
    const want = { a: [...before.a, ...fromB], b: [...before.b, ...fromA] };
    for (const [u, w] of [[a, want.a], [b, want.b]]) {
        let got = null;
        try {
            await waitFor(`${u.name} to receive ${w.length} messages on ${id}`, async () => {
                got = (await state(u)).conns.find((c) => c.id === id)?.got || [];
                return got.length >= w.length;
            }, { timeoutMs: 10000 });
        } catch (e) {
            throw new Error(`${e.message}; got ${JSON.stringify(got)}`);
        }
        assert(JSON.stringify(got) === JSON.stringify(w), `${u.name} received ${JSON.stringify(got)}, want ${JSON.stringify(w)}`);
    }
    return want;
}

// The PeerJS share the admin shows: mesh-status "peerjs" when the admin has it, else the
// bucket's pj_* fields (lua/README.md: P:{#}:stats on a single Redis).
async function pjFigures(ctx) {
    const s = await meshStatus(ctx.admin);
    if (s.peerjs) {
        // The native share too: the PeerJS sockets must not count there.
        return { users: s.peerjs.users, links: s.peerjs.links, away: s.peerjs.away, from: 'mesh-status peerjs',
            native: s.native && { users: s.native.users, links: s.native.links } };
    }
    const lines = await ctx.redis('HGETALL', `${ctx.prefix}:{#}:stats`);
    const h = {};
    for (let i = 0; i + 1 < lines.length; i += 2) h[lines[i]] = Number(lines[i + 1]);
    return { users: h.pj_members || 0, links: h.pj_links || 0, away: h.pj_away || 0, from: `${ctx.prefix}:{#}:stats pj_*` };
}

async function waitPj(ctx, want, timeoutMs = 10000) {
    const b = ctx.baseline;
    let last = null;
    try {
        return await waitFor(`PeerJS users ${b.users + want.users}, links ${b.links + want.links}` +
            (b.native ? `, native share unchanged ${JSON.stringify(b.native)}` : ''), async () => {
            last = await pjFigures(ctx);
            const native = !b.native || JSON.stringify(last.native) === JSON.stringify(b.native);
            return last.users === b.users + want.users && last.links === b.links + want.links && native ? last : null;
        }, { timeoutMs, intervalMs: 100 });
    } catch (e) {
        throw new Error(`${e.message}; last seen ${JSON.stringify(last)} (baseline ${JSON.stringify(b)})`);
    }
}

const pjNote = (f) => `users ${f.users}, links ${f.links}, away ${f.away} (${f.from})` +
    (f.native ? `; native users ${f.native.users}, links ${f.native.links}` : '');

async function main() {
    const reference = env('PEERJS_TARGET') === 'reference';
    let target;
    const ctx = {};
    if (reference) {
        ctx.reference = await startReference();
        target = ctx.reference.url;
    } else {
        const urls = (env('SB_E2E_URLS') || '').split(',').map((u) => u.trim().replace(/\/+$/, '')).filter(Boolean);
        ctx.clusterDir = env('SB_CLUSTER_DIR');
        if (urls.length !== 1 || !env('SB_ADMIN_URL') || !env('SB_ADMIN_TOKEN') || !ctx.clusterDir) {
            console.log('FAIL 00-setup: needs SB_E2E_URLS (one load balancer URL), SB_ADMIN_URL, SB_ADMIN_TOKEN and SB_CLUSTER_DIR; tests/browser/run-e2e.sh sets them');
            steps.failed++;
            return;
        }
        target = urls[0];
        ctx.admin = { url: env('SB_ADMIN_URL').replace(/\/+$/, ''), token: env('SB_ADMIN_TOKEN') };
        ctx.redis = redisClient(ctx.clusterDir);
        ctx.prefix = clusterEnv('SWITCHBOARD_PREFIX');
        ctx.nodes = fs.readdirSync(path.join(ctx.clusterDir, 'pids')).filter((n) => /^node\d+$/.test(n)).sort();
    }
    const pageUrl = await startPageServer();
    console.log(`# PeerJS target ${target}${reference ? ' (reference server peer 1.0.2)' : ' (load balancer)'}; pages from ${pageUrl}; peerjs client ` +
        JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules/peerjs/package.json'), 'utf8')).version);
    const needsSwitchboard = (name) => steps.skip(name, 'needs Switchboard (PEERJS_TARGET=reference)');
    // The server's expire timeout: cluster.env's, else the default of both servers.
    const expireMs = reference ? 5000 : Number(optionalClusterEnv('SWITCHBOARD_PEERJS_EXPIRE_TIMEOUT_MS') || 5000);

    if (reference) needsSwitchboard('admin-baseline');
    else {
        await steps.run('admin-baseline', async () => {
            ctx.baseline = await pjFigures(ctx);
            return pjNote(ctx.baseline);
        });
    }

    const alice = await openPeerPage('alice', pageUrl);
    const bob = await openPeerPage('bob', pageUrl);

    await steps.run('peers-open-with-server-ids-on-different-nodes', async () => {
        await startPeer(alice, target);
        await startPeer(bob, target);
        assert(alice.id !== bob.id, `both Peers got id ${alice.id}`);
        if (reference) return `alice ${alice.id}, bob ${bob.id}`;
        alice.node = await nodeOf(ctx, alice);
        bob.node = await nodeOf(ctx, bob);
        let restarts = 0;
        while (alice.node === bob.node && restarts < MAX_RESTARTS) {
            restarts++;
            console.log(`# the balancer put alice and bob both on ${alice.node}: a new Peer for bob (${restarts}/${MAX_RESTARTS})`);
            await bob.b.page.evaluate(() => window.pj.destroy());
            await startPeer(bob, target);
            bob.node = await nodeOf(ctx, bob);
        }
        assert(alice.node !== bob.node, `both Peers are on ${alice.node} after ${restarts} new Peer(s) for bob`);
        wentThrough(alice, target);
        wentThrough(bob, target);
        return `alice ${alice.id} on ${alice.node}, bob ${bob.id} on ${bob.node} (${restarts} new Peer(s) for bob); ids and WebSockets through ${target}`;
    });

    // Both ids claimed, no connection yet: no link.
    if (reference) needsSwitchboard('admin-counts-peerjs-users-no-link-yet');
    else {
        await steps.run('admin-counts-peerjs-users-no-link-yet', async () => pjNote(await waitPj(ctx, { users: 2, links: 0 })),
            { independent: true });
    }

    let dc;
    let dcGot;
    await steps.run('dataconnection-both-ways', async () => {
        dc = await connect(alice, bob);
        dcGot = await exchange(alice, bob, dc, 'first', 5);
        return `connection ${dc}: 5 messages each way, exact and in order`;
    });

    await steps.run('media-call-both-streams-live', async () => {
        const id = await alice.b.page.evaluate((to) => window.pj.call(to), bob.id);
        const notes = [];
        for (const u of [alice, bob]) {
            let last = null;
            try {
                await waitFor(`${u.name} to have call ${id}'s remote stream with live audio and video`, async () => {
                    last = (await state(u)).calls.find((c) => c.id === id);
                    if (last?.errors.length) throw new Error(`call errors: ${last.errors.join('; ')}`);
                    const live = (k) => last?.remote?.some((t) => t.kind === k && t.state === 'live');
                    return live('audio') && live('video');
                }, { timeoutMs: 20000 });
            } catch (e) {
                throw new Error(`${e.message}; last: ${JSON.stringify(last)}`);
            }
            assert(u === alice ? !last.incoming : last.incoming && last.peer === alice.id, `${u.name}'s call record: ${JSON.stringify(last)}`);
            // Media really flows: RTP bytes of both kinds arrive.
            const bytes = await waitFor(`${u.name} to receive audio and video RTP on call ${id}`, async () => {
                const r = await u.b.page.evaluate((c) => window.pj.inbound(c), id);
                return r.audio > 0 && r.video > 0 ? r : null;
            }, { timeoutMs: 10000 });
            notes.push(`${u.name} receives audio ${bytes.audio} B, video ${bytes.video} B`);
        }
        await screenshot(alice.b, 'peerjs-01-alice-in-call');
        return `call ${id}: ${notes.join('; ')}`;
    });

    if (reference) needsSwitchboard('admin-counts-peerjs-users-and-link');
    else {
        await steps.run('admin-counts-peerjs-users-and-link', async () => pjNote(await waitPj(ctx, { users: 2, links: 1 })),
            { independent: true });
    }

    await steps.run('peer-unavailable', async () => {
        const t0 = Date.now();
        await alice.b.page.evaluate(() => window.pj.connect('no-such-id-xyz'));
        const e = await waitFor('alice\'s Peer to emit error "peer-unavailable"', async () => {
            const s = await state(alice);
            return s.events.find((x) => x.kind === 'error' && x.at >= t0 && x.type === 'peer-unavailable');
        }, { timeoutMs: 20000 });
        const s = await state(alice);
        const others = s.events.filter((x) => x.at >= t0 && (x.kind !== 'error' || x.type !== 'peer-unavailable'));
        assert(others.length === 0, `alice's Peer also emitted ${JSON.stringify(others)}`);
        assert(s.open && !s.disconnected && !s.destroyed, `alice's Peer is not open after peer-unavailable: ${JSON.stringify(s)}`);
        assert(/no-such-id-xyz/.test(e.msg), `error message ${e.msg} does not name the id`);
        // Not before the expire timeout: until then a claim of the id would still get the offer.
        assert(e.at - t0 >= expireMs, `peer-unavailable after ${e.at - t0} ms, before the expire timeout (${expireMs} ms)`);
        return `after ${e.at - t0} ms (expire timeout ${expireMs} ms): "${e.msg}"; the Peer stays open`;
    });

    // PeerJS's "connect before the other side is up": alice connects to an id nobody holds yet;
    // carol claims it a second later (a new page, wherever the balancer puts it) and gets the
    // queued offer after OPEN; the connection opens and no peer-unavailable follows.
    await steps.run('connect-before-the-id-is-claimed', async () => {
        const carolId = `carol-${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
        const carol = await openPeerPage('carol', pageUrl);
        ctx.carol = carol;
        const t0 = Date.now();
        const id = await alice.b.page.evaluate((to) => window.pj.connect(to), carolId);
        await new Promise((r) => setTimeout(r, 1000));
        await startPeer(carol, target, carolId);
        await waitFor(`alice -> carol DataConnection ${id} open on both ends`, async () => {
            const mine = await conn(alice, { id });
            const theirs = (await state(carol)).conns.find((c) => c.id === id);
            return mine?.open && theirs?.open && theirs.incoming && theirs.peer === alice.id;
        }, { timeoutMs: 20000 });
        await exchange(alice, carol, id, 'late', 2);
        const rest = t0 + expireMs + 2000 - Date.now();
        if (rest > 0) await new Promise((r) => setTimeout(r, rest));
        const late = (await state(alice)).events.filter((x) => x.at >= t0);
        assert(late.length === 0, `alice's Peer emitted ${JSON.stringify(late)}`);
        const where = reference ? '' : ` on ${await nodeOf(ctx, carol)}`;
        await carol.b.page.evaluate(() => window.pj.destroy());
        return `carol claimed ${carolId}${where} 1 s after alice's connect; connection ${id} opened, 2 messages each way; ` +
            `no peer-unavailable ${expireMs + 2000} ms after the connect; carol's Peer destroyed`;
    });

    // Another browser asking for alice's id (its own token): the client's unavailable-id error,
    // and alice's Peer notices nothing.
    await steps.run('id-taken', async () => {
        const carol = ctx.carol;
        const t0 = Date.now();
        await newPeer(carol, target, alice.id);
        const e = await waitEvent(carol, 'error', { bad: ['open'] });
        assert(e.type === 'unavailable-id', `carol's Peer emitted error ${JSON.stringify(e)}, not unavailable-id`);
        await new Promise((r) => setTimeout(r, 500));
        const s = await state(carol);
        assert(!s.open && !s.events.some((x) => x.kind === 'open'), `carol's Peer opened: ${JSON.stringify(s.events)}`);
        const a = await state(alice);
        const seen = a.events.filter((x) => x.at >= t0);
        assert(a.open && a.id === alice.id && seen.length === 0, `alice's Peer: open ${a.open}, id ${a.id}, events ${JSON.stringify(seen)}`);
        if (!reference) {
            const node = await nodeOf(ctx, alice);
            assert(node === alice.node, `alice's id moved from ${alice.node} to ${node}`);
        }
        await closeBrowser(carol.b);
        return `"${e.msg}"; alice's Peer still open, nothing emitted`;
    });

    // Reference server: its WebSocket of alice is dropped (TCP reset) instead of a node kill.
    let killed;
    let killedAt;
    await steps.run('kill-alice-node-disconnected', async () => {
        let how;
        if (reference) {
            ctx.reference.clients.get(alice.id).getSocket().terminate();
            killedAt = Date.now();
            how = 'the reference server dropped alice\'s WebSocket';
        } else {
            killed = alice.node;
            const pid = nodePid(ctx.clusterDir, killed);
            process.kill(pid, 'SIGKILL');
            killedAt = Date.now();
            how = `kill -9 ${pid} (${killed})`;
        }
        const d = await waitEvent(alice, 'disconnected', { bad: [] });
        assert(d.id === alice.id, `disconnected names ${d.id}, not ${alice.id}`);
        const s = await state(alice);
        assert(!s.destroyed, 'alice\'s Peer was destroyed');
        const errors = s.events.filter((x) => x.kind === 'error' && x.at >= killedAt);
        assert(errors.every((x) => x.type === 'network'), `errors other than network: ${JSON.stringify(errors)}`);
        return `${how}; alice's Peer disconnected after ${d.at - killedAt} ms`;
    });

    await steps.run('reconnect-same-id-other-node', async () => {
        let attempts = 0;
        for (;;) {
            attempts++;
            const before = (await state(alice)).events.filter((x) => x.kind === 'disconnected').length;
            await alice.b.page.evaluate(() => window.pj.reconnect());
            const r = await waitFor('alice\'s Peer to open again, or disconnect again', async () => {
                const s = await state(alice);
                if (s.events.filter((x) => x.kind === 'open').length >= 2) return 'open';
                if (s.events.filter((x) => x.kind === 'disconnected').length > before) return 'disconnected';
                return null;
            }, { timeoutMs: 15000 });
            if (r === 'open') break;
            assert(attempts < MAX_RECONNECTS, `alice's reconnect() failed ${attempts} times: ${JSON.stringify((await state(alice)).events)}`);
            console.log(`# alice's reconnect() ${attempts} ended in disconnected: trying again in 1 s`);
            await new Promise((res) => setTimeout(res, 1000));
        }
        const s = await state(alice);
        assert(s.id === alice.id && s.open, `alice after reconnect: id ${s.id} (was ${alice.id}), open ${s.open}`);
        const taken = s.events.filter((x) => x.kind === 'error' && x.at >= killedAt && x.type !== 'network');
        assert(taken.length === 0, `alice's Peer emitted ${JSON.stringify(taken)}`);
        assert(alice.sockets.length >= 2, `alice opened ${alice.sockets.length} WebSocket(s)`);
        if (!reference) {
            alice.node = await nodeOf(ctx, alice);
            assert(alice.node !== killed, `alice's id is on ${alice.node}, the node that was killed`);
            wentThrough(alice, target);
        }
        return `open again as ${s.id}${reference ? '' : ` on ${alice.node}`} ${Date.now() - killedAt} ms after the kill (${attempts} reconnect() call(s))`;
    });

    await steps.run('old-dataconnection-after-kill', async () => {
        dcGot = await exchange(alice, bob, dc, 'after-kill', 3, dcGot);
        return `connection ${dc} (opened before the kill): 3 more messages each way, exact and in order`;
    });

    await steps.run('new-connect-to-reconnected-id', async () => {
        const id = await connect(bob, alice);
        await exchange(bob, alice, id, 'new', 3);
        await screenshot(alice.b, 'peerjs-02-alice-reconnected');
        return `bob -> alice connection ${id}${reference ? '' : ` through ${alice.node}`}: 3 messages each way`;
    });

    if (reference) {
        needsSwitchboard('admin-after-reconnect');
        needsSwitchboard('admin-after-pages-close');
    } else {
        await steps.run('admin-after-reconnect', async () => pjNote(await waitPj(ctx, { users: 2, links: 1 })), { independent: true });

        await steps.run('admin-after-pages-close', async () => {
            await closeBrowser(bob.b);
            const one = await waitPj(ctx, { users: 1, links: 0 });
            await closeBrowser(alice.b);
            const none = await waitPj(ctx, { users: 0, links: 0 });
            return `bob's page closed: ${pjNote(one)}; alice's too: ${pjNote(none)}`;
        }, { independent: true });
    }

    await steps.run('no-page-errors', async () => {
        const problems = [alice, bob, ctx.carol].filter(Boolean).flatMap((u) => u.b.problems.map((p) => `${u.name}: ${p}`));
        assert(problems.length === 0, problems.join('\n'));
    });
}

await runSteps(steps, main, async () => {
    for (const b of browsers) {
        if (b.console.length && steps.failed) console.log(`# ${b.label} console:\n#   ${b.console.slice(-30).join('\n#   ')}`);
        await closeBrowser(b);
    }
    for (const s of servers) {
        s.closeAllConnections?.();
        s.close();
    }
});
