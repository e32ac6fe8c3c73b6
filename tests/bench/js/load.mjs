// The neutral load client of the comparison section of tests/bench/bench.py (issue 14): one
// Node.js process on the `ws` package (socket.io-client for Socket.IO) drives peerjs-server,
// Socket.IO + redis-adapter or Switchboard with the same load and the same measurement, so
// no stack is measured with a client of its own. JSON lines on stdout.
//
//   node load.mjs --stack peerjs|sio|sb --mode relay|rate|idle|room --url U [--url U2] ...
//
// relay: --pairs P, --window W messages in flight per pair: side a sends, b echoes each message
//        back, a sends the next on each echo. Counted: deliveries at either end.
// rate:  --rate R messages/s in total, open loop (sent on schedule whatever arrives), pairs
//        taken in turn, directions alternating; nothing is echoed.
// idle:  --conns N connections (joined in pair rooms for sb), --inflight handshakes at once;
//        prints "ready" with the connect rate, then holds them until SIGTERM.
// room:  Switchboard only: --members M in one room spread over the urls, then --joins K times
//        a member joins the full room and leaves again, then --signals K2 signals between two
//        members (one at a time); prints "result", then holds until SIGTERM.
// Side a of every pair connects to the first --url, side b to the last one. Latency is
// one-way, from send() to the receiver's handler, on this process's clock (a timestamp inside
// the message). relay/rate print "window" when the measured window starts and "result" at its end.
import { performance } from "node:perf_hooks";
import { WebSocket } from "ws";
import { io } from "socket.io-client";

const A = { stack: "sb", mode: "relay", url: [], pairs: 100, window: 16, seconds: 10, warmup: 2,
            rate: 2000, conns: 1000, inflight: 100, members: 1000, joins: 20, signals: 500,
            prefix: "cmp" + process.pid };
for (let i = 2; i < process.argv.length; i += 2) {
    const k = process.argv[i].replace(/^--/, ""), v = process.argv[i + 1];
    if (k === "url") A.url.push(v);
    else A[k] = typeof A[k] === "number" ? Number(v) : v;
}
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const CAND = "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.2 " +
    "rport 46154 generation 0 ufrag Xq3b";
const fail = (why) => { out({ event: "error", error: String(why) }); process.exit(2); };

// ---- one connection per stack: open() resolves once it can send; send(to, data); onSignal ----

let seq = 0;
function sbConn(url) {
    const c = { id: null, peers: new Set(), onSignal: null, waiters: [], errors: 0 };
    const ws = new WebSocket(url, { perMessageDeflate: false });
    c.ws = ws;
    c.send = (to, data) => ws.send(JSON.stringify({ type: "signal", to, data }));
    c.raw = (o) => ws.send(JSON.stringify(o));
    c.next = (type) => new Promise((res) => c.waiters.push({ type, res }));
    ws.on("message", (buf) => {
        const m = JSON.parse(buf);
        if (m.type === "signal") { if (c.onSignal) c.onSignal(m.from, m.data); return; }
        if (m.type === "welcome") c.id = m.id;
        else if (m.type === "joined") for (const p of m.peers) c.peers.add(p.id);
        else if (m.type === "peer-joined") c.peers.add(m.id);
        else if (m.type === "peer-left") c.peers.delete(m.id);
        else if (m.type === "error") { c.errors++; out({ event: "server-error", msg: m }); }
        if (c.onEvent) c.onEvent(m);
        c.waiters = c.waiters.filter((w) => (w.type === m.type ? (w.res(m), false) : true));
    });
    c.open = new Promise((res, rej) => {
        ws.once("error", rej);
        ws.once("close", () => rej(new Error("closed")));
        c.waiters.push({ type: "welcome", res: () => res(c) });
    });
    c.close = () => ws.terminate();
    return c;
}

function peerjsConn(url, i) {
    const id = `p${process.pid}x${i}x${Math.random().toString(36).slice(2, 10)}`;
    const token = Math.random().toString(36).slice(2, 12);
    const c = { id, onSignal: null };
    const ws = new WebSocket(`${url}?key=peerjs&id=${id}&token=${token}`,
                             { perMessageDeflate: false });
    c.ws = ws;
    c.send = (to, data) => ws.send(JSON.stringify({ type: "CANDIDATE", dst: to, payload: data }));
    let hb = null;
    c.open = new Promise((res, rej) => {
        ws.once("error", rej);
        ws.once("close", () => { clearInterval(hb); rej(new Error("closed")); });
        ws.on("message", (buf) => {
            const m = JSON.parse(buf);
            if (m.type === "CANDIDATE") { if (c.onSignal) c.onSignal(m.src, m.payload); }
            else if (m.type === "OPEN") {
                // the heartbeat peerjs' own client sends (the server drops silent sockets)
                hb = setInterval(() => ws.send('{"type":"HEARTBEAT"}'), 5000);
                res(c);
            } else if (m.type === "ERROR" || m.type === "ID-TAKEN") rej(new Error(m.type));
        });
    });
    c.close = () => { clearInterval(hb); ws.terminate(); };
    return c;
}

function sioConn(url) {
    const c = { id: null, onSignal: null };
    const s = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
    c.send = (to, data) => s.emit("signal", { to, data });
    s.on("signal", (m) => { if (c.onSignal) c.onSignal(m.from, m.data); });
    c.open = new Promise((res, rej) => {
        s.once("connect", () => { c.id = s.id; res(c); });
        s.once("connect_error", rej);
    });
    c.close = () => s.disconnect();
    return c;
}

const makers = { sb: sbConn, peerjs: peerjsConn, sio: sioConn };
const wsPath = (u) => u; // urls are given complete: .../ws, .../peerjs, http://... for sio

async function openMany(n, urlOf, inflight, after) {
    const conns = new Array(n);
    let next = 0, failed = 0;
    async function worker() {
        while (next < n) {
            const i = next++;
            try {
                conns[i] = await makers[A.stack](wsPath(urlOf(i)), i).open;
                if (after) await after(conns[i], i);
            } catch (e) {
                failed++;
                conns[i] = null;
            }
        }
    }
    await Promise.all(Array.from({ length: Math.min(inflight, n) }, worker));
    return { conns, failed };
}

// Switchboard: joins the pair room of connection i and resolves once the partner is known
// (joined.peers or peer-joined), so no signal can meet peer-not-found.
async function sbJoinPair(c, i) {
    const joined = c.next("joined");
    c.raw({ type: "join", room: `${A.prefix}-${i >> 1}` });
    await joined;
}
async function sbPartnersKnown(conns) {
    const t0 = now();
    for (let k = 0; k + 1 < conns.length; k += 2) {
        const a = conns[k], b = conns[k + 1];
        while (!a.peers.has(b.id) || !b.peers.has(a.id)) {
            if (now() - t0 > 20000) fail("partners not known after 20 s");
            await sleep(5);
        }
    }
}

function pct(sorted, p) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}
function latStats(lat) {
    const s = Float64Array.from(lat).sort();
    return { lat_n: s.length, lat_p50_us: pct(s, 0.5) * 1000, lat_p99_us: pct(s, 0.99) * 1000,
             lat_p999_us: pct(s, 0.999) * 1000, lat_max_us: s.length ? s[s.length - 1] * 1000 : null };
}

async function pairsUp() {
    const P = A.pairs, first = A.url[0], last = A.url[A.url.length - 1];
    const after = A.stack === "sb" ? sbJoinPair : null;
    const { conns, failed } = await openMany(2 * P, (i) => (i % 2 ? last : first), 50, after);
    if (failed) fail(`${failed} connections failed`);
    if (A.stack === "sb") await sbPartnersKnown(conns);
    return conns;
}

function payload(t) {
    return { candidate: CAND, sdpMid: "0", sdpMLineIndex: 0, t, k: seq++ };
}

// The caller reads this process's CPU at "window-end": exit only when told (SIGTERM) or later.
function linger() {
    process.on("SIGTERM", () => process.exit(0));
    setTimeout(() => process.exit(0), 30000);
}

async function measured(lat, counter) {
    out({ event: "ready" });
    await sleep(A.warmup * 1000);
    lat.length = 0;
    const c0 = counter(), t0 = now();
    out({ event: "window" });
    await sleep(A.seconds * 1000);
    const n = counter() - c0, dt = (now() - t0) / 1000;
    out({ event: "window-end" });
    return { n, dt };
}

async function relay() {
    const conns = await pairsUp();
    const lat = [];
    let delivered = 0, errors = 0;
    for (let k = 0; k < conns.length; k += 2) {
        const a = conns[k], b = conns[k + 1];
        b.onSignal = (from, d) => {
            delivered++;
            lat.push(now() - d.t);
            d.t = now();
            b.send(a.id, d); // echoed back
        };
        a.onSignal = (from, d) => {
            delivered++;
            lat.push(now() - d.t);
            a.send(b.id, payload(now()));
        };
    }
    for (let k = 0; k < conns.length; k += 2)
        for (let w = 0; w < A.window; w++) conns[k].send(conns[k + 1].id, payload(now()));
    const { n, dt } = await measured(lat, () => delivered);
    for (const c of conns) errors += c.errors || 0;
    const frame = JSON.stringify(A.stack === "sb"
        ? { type: "signal", to: conns[1].id, data: payload(0) }
        : A.stack === "peerjs" ? { type: "CANDIDATE", dst: conns[1].id, payload: payload(0) }
            : ["signal", { to: conns[1].id, data: payload(0) }]).length;
    out({ event: "result", msgs: n, seconds: dt, msgs_per_s: n / dt, frame_bytes: frame,
          server_errors: errors, ...latStats(lat) });
    linger();
}

async function rate() {
    const conns = await pairsUp();
    const P = conns.length / 2;
    const lat = [];
    let delivered = 0, sent = 0;
    for (const c of conns) c.onSignal = (from, d) => { delivered++; lat.push(now() - d.t); };
    const start = now();
    const timer = setInterval(() => {
        const due = Math.floor((now() - start) * A.rate / 1000);
        while (sent < due) {
            const k = sent % P, dir = Math.floor(sent / P) % 2;
            const a = conns[2 * k + dir], b = conns[2 * k + 1 - dir];
            a.send(b.id, payload(now()));
            sent++;
        }
    }, 1);
    const marks = [];
    const { n, dt } = await measured(lat, () => (marks.push(sent), delivered));
    clearInterval(timer);
    out({ event: "result", msgs: n, seconds: dt, msgs_per_s: n / dt,
          sent_per_s: (marks[1] - marks[0]) / dt,
          ...latStats(lat) });
    linger();
}

async function idle() {
    const t0 = now();
    const url = A.url[0];
    const after = A.stack === "sb" ? sbJoinPair : null;
    const { conns, failed } = await openMany(A.conns, () => url, A.inflight, after);
    const dt = (now() - t0) / 1000;
    out({ event: "ready", opened: A.conns - failed, failed, seconds: dt,
          connects_per_s: (A.conns - failed) / dt });
    const done = () => {
        let open = 0;
        for (const c of conns) if (c && (c.ws ? c.ws.readyState === 1 : true)) open++;
        out({ event: "result", open_at_end: open });
        process.exit(0);
    };
    process.on("SIGTERM", done);
    setInterval(() => {}, 1 << 30);
}

// ---- room: one room of --members members (Switchboard) ----------------------------------------

async function room() {
    const M = A.members, urls = A.url, name = `${A.prefix}-big`;
    const t0 = now();
    const join = async (c) => {
        const j = c.next("joined");
        c.raw({ type: "join", room: name });
        return j;
    };
    // M - 1 members; member i on urls[i % urls.length]
    const { conns, failed } = await openMany(M - 1, (i) => urls[i % urls.length], 20, join);
    if (failed) fail(`${failed} members failed to connect or join`);
    const fill_s = (now() - t0) / 1000;
    // wait until every member knows every other (all peer-joined delivered)
    const deadline = now() + 60000;
    while (conns.some((c) => c.peers.size < M - 2)) {
        if (now() > deadline) fail("members did not all see each other");
        await sleep(20);
    }
    // the M-th member joins and leaves K times: its joined (M-1 peers), and the moment the last
    // of the others got its peer-joined (the fan-out)
    const last = await makers.sb(urls[urls.length - 1], M).open;
    const joinMs = [], fanMs = [];
    for (let k = 0; k < A.joins; k++) {
        let seen = 0, tFan = null;
        const s = now();
        for (const c of conns) c.onEvent = (m) => {
            if (m.type === "peer-joined" && m.id === last.id && ++seen === conns.length) tFan = now();
        };
        const j = await join(last);
        joinMs.push(now() - s);
        if (j.peers.length !== M - 1) fail(`joined listed ${j.peers.length} peers`);
        while (tFan === null) {
            if (now() - s > 20000) fail("peer-joined fan-out incomplete");
            await sleep(1);
        }
        fanMs.push(tFan - s);
        let left = 0;
        for (const c of conns) c.onEvent = (m) => { if (m.type === "peer-left") left++; };
        const l = last.next("left");
        last.raw({ type: "leave" });
        await l;
        while (left < conns.length) { if (now() - s > 40000) fail("peer-left fan-out"); await sleep(1); }
        for (const c of conns) c.onEvent = null;
    }
    // the M-th member joins for good, so the room is full while bench.py provokes resyncs;
    // signals from member 0 (urls[0]) to it (the last url), one at a time
    await join(last);
    const sig = [], a = conns[0];
    while (!a.peers.has(last.id)) { await sleep(1); } // its node has seen the join
    for (let k = 0; k < A.signals; k++) {
        const got = new Promise((res) => { last.onSignal = (from, d) => res(now() - d.t); });
        a.send(last.id, payload(now()));
        sig.push(await got);
    }
    const st = (v) => { const s = Float64Array.from(v).sort(); return { p50: pct(s, 0.5), p99: pct(s, 0.99), max: s[s.length - 1] }; };
    out({ event: "result", members: M, fill_s, join_ms: st(joinMs), fanout_ms: st(fanMs),
          signal_ms: st(sig) });
    out({ event: "holding" });
    process.on("SIGTERM", () => process.exit(0));
    setInterval(() => {}, 1 << 30);
}

const modes = { relay, rate, idle, room };
if (!modes[A.mode] || !makers[A.stack] || !A.url.length) fail("bad arguments");
modes[A.mode]().catch(fail);
