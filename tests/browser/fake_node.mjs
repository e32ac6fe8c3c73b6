// A scripted stand-in for Switchboard nodes and the admin, for testing the browser client alone:
// an in-memory implementation of protocol v1 (docs/protocol.md) behind a minimal WebSocket
// server, serving client/ like a node does, plus /admin/mesh-status. Several "nodes" (HTTP
// servers on different ports) share one room state, as real nodes share Redis. Tests steer it
// to do what a real node does only in rare situations: close sockets with 1001 / 4000 / 4002,
// refuse joins, send duplicate or unknown messages, hand out short-lived TURN credentials.
// It implements session resume (issue 15: tokens in welcome/joined/resumed, the away state with
// peer-away/peer-back, queued signals with a bound, resume-failed `unknown`/`retry`, takeover of
// a session whose old socket is still open) and can reset sockets (TCP RST) or go silent on one.
// It is not a reference implementation: no rate limits, auth, Redis, or size limits beyond a cap.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const CLIENT_DIR = path.resolve(HERE, '../../client');
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/;
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };
// The policy the real node sends with the page.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; " +
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

// ---- WebSocket framing (RFC 6455), server side ----

function encodeFrame(opcode, payload) {
    const len = payload.length;
    let head;
    if (len < 126) {
        head = Buffer.from([0x80 | opcode, len]);
    } else if (len < 65536) {
        head = Buffer.alloc(4);
        head[0] = 0x80 | opcode; head[1] = 126; head.writeUInt16BE(len, 2);
    } else {
        head = Buffer.alloc(10);
        head[0] = 0x80 | opcode; head[1] = 127; head.writeBigUInt64BE(BigInt(len), 2);
    }
    return Buffer.concat([head, payload]);
}

class WsConn {
    constructor(socket, onText, onClose) {
        this.socket = socket;
        this.buf = Buffer.alloc(0);
        this.fragments = [];
        this.closed = false;
        this.closedBy = null; // client (its close frame), server (close()), or lost (TCP)
        this.silent = false; // a black hole: nothing read, nothing written
        this.onText = onText;
        this.onClose = onClose;
        socket.setNoDelay(true);
        socket.on('data', (d) => this.#onData(d));
        socket.on('close', () => this.#finish(1006));
        socket.on('error', () => this.#finish(1006));
    }

    #onData(chunk) {
        if (this.silent) return;
        this.buf = Buffer.concat([this.buf, chunk]);
        for (;;) {
            if (this.buf.length < 2) return;
            const fin = (this.buf[0] & 0x80) !== 0;
            const opcode = this.buf[0] & 0x0f;
            const masked = (this.buf[1] & 0x80) !== 0;
            let len = this.buf[1] & 0x7f;
            let off = 2;
            if (len === 126) {
                if (this.buf.length < 4) return;
                len = this.buf.readUInt16BE(2); off = 4;
            } else if (len === 127) {
                if (this.buf.length < 10) return;
                len = Number(this.buf.readBigUInt64BE(2)); off = 10;
            }
            if (len > 1 << 20) return this.close(1009, 'too big');
            const need = off + (masked ? 4 : 0) + len;
            if (this.buf.length < need) return;
            let payload = this.buf.subarray(off + (masked ? 4 : 0), need);
            if (masked) {
                const key = this.buf.subarray(off, off + 4);
                payload = Buffer.from(payload);
                for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
            }
            this.buf = this.buf.subarray(need);
            if (opcode === 0x8) {
                const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
                this.closedBy = 'client';
                this.close(code === 1005 ? 1000 : code, '');
                return;
            } else if (opcode === 0x9) {
                this.#write(0xa, payload);
            } else if (opcode === 0x1 || opcode === 0x0) {
                this.fragments.push(payload);
                if (fin) {
                    const text = Buffer.concat(this.fragments).toString('utf8');
                    this.fragments = [];
                    this.onText(text);
                }
            }
        }
    }

    #write(opcode, payload) {
        if (!this.closed && !this.silent && !this.socket.destroyed) this.socket.write(encodeFrame(opcode, payload));
    }

    send(obj) {
        this.#write(0x1, Buffer.from(JSON.stringify(obj)));
    }

    close(code = 1000, reason = '') {
        if (this.closed) return;
        this.closedBy ||= 'server';
        const r = Buffer.from(reason).subarray(0, 120);
        const p = Buffer.alloc(2 + r.length);
        p.writeUInt16BE(code, 0);
        r.copy(p, 2);
        this.#write(0x8, p);
        this.socket.end();
        this.#finish(code);
    }

    /** Drops the TCP connection with a reset and no close frame, as a dead link or node does. */
    reset() {
        if (this.closed) return;
        this.socket.resetAndDestroy();
        this.#finish(1006);
    }

    #finish(code) {
        if (this.closed) return;
        this.closed = true;
        this.closedBy ||= 'lost';
        this.code = code;
        this.socket.destroy();
        this.onClose(code);
    }
}

// ---- the fake cluster ----

/**
 * Starts `nodes` fake nodes and a fake admin on 127.0.0.1 (ephemeral ports).
 * Options: nodes (ids), adminToken, turnTtlMs (0: ice_servers is []), resumeGraceMs (0: no
 * resume), queueMax (signals queued per away socket), log (function). Returns the cluster
 * object; call close() when done.
 */
export async function startFakeCluster({ nodes = ['fakeA', 'fakeB'], adminToken = 'fake-admin-token', turnTtlMs = 0,
    resumeGraceMs = 15000, queueMax = 64, log = () => {} } = {}) {
    const cluster = new FakeCluster({ adminToken, turnTtlMs, resumeGraceMs, queueMax, log });
    for (const id of nodes) await cluster.addNode(id);
    await cluster.startAdmin();
    return cluster;
}

class FakeCluster {
    constructor({ adminToken, turnTtlMs, resumeGraceMs, queueMax, log }) {
        this.adminToken = adminToken;
        this.turnTtlMs = turnTtlMs;
        this.resumeGraceMs = resumeGraceMs;
        this.queueMax = queueMax;
        this.resumeFailures = []; // answers the next resumes get instead of resumed: {reason, retry_ms, id?} (id: only a resume of that session)
        this.resumed = []; // every successful resume: {id, node, tookOver}
        this.refuseUpgrades = 0; // the next N WebSocket upgrades get HTTP 503 (a node not there)
        this.upgrades = 0; // WebSocket upgrades accepted
        this.log = log;
        this.servers = [];
        this.urls = [];
        this.adminUrl = null;
        this.sockets = new Map(); // id -> session
        this.rooms = new Map(); // room -> Map(id -> session)
        this.received = []; // every client message: {from, msg, at}
        this.joinErrors = []; // error codes the next joins get, one each
        this.duplicateRoomEvents = false; // send every peer-joined / peer-left twice
        this.extraFields = false; // add unknown fields and messages
    }

    async #listen(server) {
        await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
        this.servers.push(server);
        return `http://127.0.0.1:${server.address().port}`;
    }

    async addNode(nodeId) {
        const server = http.createServer((req, res) => this.#serveFile(req, res));
        server.on('upgrade', (req, socket) => this.#upgrade(nodeId, req, socket));
        this.urls.push(await this.#listen(server));
    }

    async startAdmin() {
        const server = http.createServer((req, res) => {
            if (req.url === '/readyz' || req.url === '/livez') return res.end('{"ok":true}');
            if (req.headers.authorization !== `Bearer ${this.adminToken}`) {
                res.writeHead(401, { 'content-type': 'application/json' });
                return res.end('{"error":"unauthorized"}');
            }
            if (req.url === '/admin/mesh-status') {
                res.writeHead(200, { 'content-type': 'application/json' });
                return res.end(JSON.stringify(this.meshStatus()));
            }
            res.writeHead(404).end();
        });
        this.adminUrl = await this.#listen(server);
    }

    close() {
        for (const s of this.sockets.values()) {
            clearTimeout(s.graceTimer);
            if (!s.away) s.ws.close(1001, 'shutdown');
        }
        for (const server of this.servers) {
            server.close();
            server.closeAllConnections?.();
        }
    }

    #serveFile(req, res) {
        const url = new URL(req.url, 'http://x');
        if (url.pathname === '/readyz' || url.pathname === '/livez') return res.end('{"ok":true}');
        const name = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
        if (!/^[a-z0-9_-]+\.(html|js|css)$/.test(name)) return res.writeHead(404).end('not found');
        fs.readFile(path.join(CLIENT_DIR, name), (err, data) => {
            if (err) return res.writeHead(404).end('not found');
            res.writeHead(200, {
                'content-type': TYPES[path.extname(name)],
                'content-security-policy': CSP,
                'cache-control': 'no-cache',
            });
            res.end(data);
        });
    }

    #upgrade(nodeId, req, socket) {
        const key = req.headers['sec-websocket-key'];
        if (new URL(req.url, 'http://x').pathname !== '/ws' || !key || (req.headers.upgrade || '').toLowerCase() !== 'websocket') {
            socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
            return;
        }
        if (this.refuseUpgrades > 0) {
            this.refuseUpgrades--;
            socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
            return;
        }
        this.upgrades++;
        const accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
        const protos = (req.headers['sec-websocket-protocol'] || '').split(',').map((s) => s.trim());
        socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
            `Sec-WebSocket-Accept: ${accept}\r\n` +
            (protos.includes('switchboard.v1') ? 'Sec-WebSocket-Protocol: switchboard.v1\r\n' : '') + '\r\n');
        const id = crypto.randomBytes(16).toString('base64url');
        const s = { id, node: nodeId, room: null, meta: null, links: new Set(), fresh: true, away: false, token: null };
        // The connection's session changes when a resume hands it to an older session.
        const conn = new WsConn(socket, (text) => conn.session && !conn.silent && this.#onText(conn.session, text),
            () => conn.session && this.#onGone(conn.session, conn));
        conn.session = s;
        s.ws = conn;
        this.sockets.set(id, s);
        const limits = { max_message_bytes: 65536, resume_grace_ms: this.resumeGraceMs };
        const welcome = { type: 'welcome', id, node: nodeId, protocol: 1, limits };
        if (this.resumeGraceMs > 0) welcome.resume = this.#newToken(s);
        if (this.extraFields) welcome.future_field = { x: 1 };
        s.ws.send(welcome);
    }

    #newToken(s) {
        s.token = crypto.randomBytes(16).toString('base64url');
        return s.token;
    }

    iceServers(id) {
        if (!this.turnTtlMs) return [];
        const expiry = Math.floor((Date.now() + this.turnTtlMs) / 1000);
        const username = `${expiry}:${id}`;
        const credential = crypto.createHmac('sha1', 'fake-secret').update(username).digest('base64');
        // Port 9 on loopback: nothing answers, so relay gathering fails quietly.
        return [{ urls: ['turn:127.0.0.1:9?transport=udp'], username, credential }];
    }

    #reply(s, msg, rid) {
        if (rid !== undefined) msg.rid = rid;
        s.ws.send(msg);
    }

    #error(s, code, rid, message = code) {
        this.#reply(s, { type: 'error', code, message }, rid);
    }

    #toRoom(room, exceptId, msg) {
        for (const m of this.rooms.get(room)?.values() || []) {
            if (m.id === exceptId) continue;
            if (m.away) {
                // What changed while it was away is told in `resumed`.
                if (msg.type === 'peer-joined') m.missed.joined.push(msg.id);
                if (msg.type === 'peer-left') m.missed.left.push(msg.id);
                continue;
            }
            m.ws.send(msg);
            if (this.duplicateRoomEvents && (msg.type === 'peer-joined' || msg.type === 'peer-left')) m.ws.send(msg);
        }
    }

    #onText(s, text) {
        let msg;
        try {
            msg = JSON.parse(text);
        } catch {
            return this.#error(s, 'bad-json');
        }
        this.received.push({ from: s.id, msg, at: Date.now() });
        const rid = msg.rid;
        const first = s.fresh;
        s.fresh = false;
        switch (msg.type) {
        case 'resume':
            if (!first) return this.#reply(s, { type: 'error', code: 'resume-failed', reason: 'unknown', message: 'resume must be the first message' }, rid);
            return this.#resume(s, msg, rid);
        case 'ping': return this.#reply(s, { type: 'pong' }, rid);
        case 'join': return this.#join(s, msg, rid);
        case 'leave':
            if (!s.room) return this.#error(s, 'not-joined', rid);
            this.#reply(s, { type: 'left', room: s.room }, rid);
            return this.#removeMember(s, 'leave');
        case 'signal': {
            if (!s.room) return this.#error(s, 'not-joined', rid);
            const to = this.rooms.get(s.room).get(msg.to);
            if (!to || to === s) return this.#error(s, 'peer-not-found', rid);
            if (to.away) {
                if (to.queue.length >= this.queueMax) return this.#error(s, 'peer-queue-full', rid);
                to.queue.push({ type: 'signal', from: s.id, data: msg.data });
            } else {
                to.ws.send({ type: 'signal', from: s.id, data: msg.data });
            }
            if (rid !== undefined) this.#reply(s, { type: 'signal-ack' }, rid);
            return;
        }
        case 'link': return this.#link(s, msg, rid);
        case 'ice-servers':
            if (!s.room) return this.#error(s, 'not-joined', rid);
            return this.#reply(s, { type: 'ice-servers', ice_servers: this.iceServers(s.id) }, rid);
        default: return this.#error(s, 'unknown-type', rid);
        }
    }

    #join(s, msg, rid) {
        if (s.room) return this.#error(s, 'already-joined', rid);
        if (typeof msg.room !== 'string' || !ROOM_RE.test(msg.room)) return this.#error(s, 'bad-room', rid);
        if (this.joinErrors.length) return this.#error(s, this.joinErrors.shift(), rid);
        if (!this.rooms.has(msg.room)) this.rooms.set(msg.room, new Map());
        const room = this.rooms.get(msg.room);
        const peers = [...room.values()].map((m) => ({ id: m.id, meta: m.meta }));
        s.room = msg.room;
        s.meta = msg.meta && typeof msg.meta === 'object' ? msg.meta : {};
        room.set(s.id, s);
        const joined = { type: 'joined', room: msg.room, id: s.id, peers, ice_servers: this.iceServers(s.id) };
        if (this.resumeGraceMs > 0) joined.resume = this.#newToken(s);
        if (this.extraFields) joined.unknown_field = 'ignored';
        this.#reply(s, joined, rid);
        if (this.extraFields) s.ws.send({ type: 'from-the-future', x: 1 });
        this.#toRoom(msg.room, s.id, { type: 'peer-joined', id: s.id, meta: s.meta });
    }

    #formed(a, b) {
        return a.links.has(b.id) && b.links.has(a.id);
    }

    #link(s, msg, rid) {
        if (!s.room) return this.#error(s, 'not-joined', rid);
        const peer = this.rooms.get(s.room).get(msg.peer);
        if (!peer || peer === s) return this.#error(s, 'peer-not-found', rid);
        if (msg.state !== 'up' && msg.state !== 'down') return this.#error(s, 'bad-message', rid);
        const was = this.#formed(s, peer);
        if (msg.state === 'up') s.links.add(peer.id);
        else { s.links.delete(peer.id); peer.links.delete(s.id); }
        this.#reply(s, { type: 'link-ack', peer: peer.id, state: msg.state }, rid);
        const now = this.#formed(s, peer);
        if (was !== now) {
            const state = now ? 'up' : 'down';
            s.ws.send({ type: 'link-state', peer: peer.id, state });
            if (!peer.away) peer.ws.send({ type: 'link-state', peer: s.id, state });
        }
    }

    // `resume` as the first message of a fresh socket: the session `msg.id` (away, or still
    // open elsewhere: taken over) moves onto this socket; the fresh session is discarded.
    #resume(fresh, msg, rid) {
        const i = this.resumeFailures.findIndex((f) => !f.id || f.id === msg.id);
        const failure = i < 0 ? null : this.resumeFailures.splice(i, 1)[0];
        if (failure) {
            fresh.fresh = true; // nothing changed: the socket may resume again, or join
            const { reason, retry_ms: retryMs } = failure;
            const err = { type: 'error', code: 'resume-failed', reason, message: `resume failed: ${reason}` };
            if (retryMs !== undefined) err.retry_ms = retryMs;
            return this.#reply(fresh, err, rid);
        }
        const s = this.sockets.get(msg.id);
        if (!s || s === fresh || !s.room || s.room !== msg.room || !s.token || s.token !== msg.resume) {
            fresh.fresh = true;
            return this.#reply(fresh, { type: 'error', code: 'resume-failed', reason: 'unknown', message: 'no such session' }, rid);
        }
        const tookOver = !s.away;
        if (tookOver) {
            s.ws.session = null; // its close is no longer this session's
            s.ws.reset();
        }
        clearTimeout(s.graceTimer);
        this.sockets.delete(fresh.id);
        s.ws = fresh.ws;
        s.ws.session = s;
        s.node = fresh.node;
        s.fresh = false;
        const wasAway = s.away;
        s.away = false;
        const missed = s.missed || { joined: [], left: [] };
        s.missed = null;
        const room = this.rooms.get(s.room);
        const peers = [...room.values()].filter((m) => m !== s).map((m) => (m.away ? { id: m.id, meta: m.meta, away: true } : { id: m.id, meta: m.meta }));
        const links = peers.filter((p) => this.#formed(s, room.get(p.id))).map((p) => p.id);
        this.#reply(s, {
            type: 'resumed', id: s.id, room: s.room, resume: this.#newToken(s), peers,
            joined: missed.joined.filter((id) => room.has(id)), left: missed.left, links,
            ice_servers: this.iceServers(s.id),
        }, rid);
        for (const m of s.queue || []) s.ws.send(m);
        s.queue = [];
        if (wasAway) this.#toRoom(s.room, s.id, { type: 'peer-back', id: s.id });
        this.resumed.push({ id: s.id, node: s.node, tookOver });
    }

    // Whether a closed socket's session gets the grace: a lost socket, a client close other
    // than 1000/1001, and the drain (1012); never `leave` or a socket that never joined.
    #graceFor(s, conn) {
        if (!(this.resumeGraceMs > 0) || !s.room) return false;
        if (conn.closedBy === 'lost') return true;
        if (conn.closedBy === 'client') return conn.code !== 1000 && conn.code !== 1001;
        return conn.code === 1012;
    }

    #goAway(s) {
        s.away = true;
        s.queue = [];
        s.missed = { joined: [], left: [] };
        this.#toRoom(s.room, s.id, { type: 'peer-away', id: s.id });
        s.graceTimer = setTimeout(() => {
            if (!s.away) return;
            this.sockets.delete(s.id);
            s.away = false;
            this.#removeMember(s, 'disconnect');
        }, this.resumeGraceMs);
    }

    #removeMember(s, reason) {
        if (!s.room) return;
        const room = this.rooms.get(s.room);
        room.delete(s.id);
        for (const m of room.values()) m.links.delete(s.id);
        s.links.clear();
        const name = s.room;
        s.room = null;
        this.#toRoom(name, s.id, { type: 'peer-left', id: s.id, reason });
        if (room.size === 0) this.rooms.delete(name);
    }

    #onGone(s, conn) {
        if (this.#graceFor(s, conn)) return this.#goAway(s);
        this.sockets.delete(s.id);
        this.#removeMember(s, 'disconnect');
    }

    #live(nodeId, id) {
        return [...this.sockets.values()].filter((s) => !s.away && (nodeId === null || s.node === nodeId) && (id === null || s.id === id));
    }

    /** Closes every socket (of one node, if given) with a close code, as a node would. */
    closeSockets(code, reason = '', nodeId = null) {
        for (const s of this.#live(nodeId, null)) s.ws.close(code, reason);
    }

    /** Resets the TCP connection (no close frame) of every socket of a node, or of one socket. */
    resetSockets(nodeId = null, id = null) {
        for (const s of this.#live(nodeId, id)) s.ws.reset();
    }

    /** Makes a socket a black hole both ways (its TCP connection stays open), as a network does. */
    silence(id) {
        for (const s of this.#live(null, id)) s.ws.silent = true;
    }

    /** A session by id: {id, node, room, away, queue, ...}. */
    session(id) {
        return this.sockets.get(id);
    }

    /** Messages of a type the clients sent, in order. */
    sent(type) {
        return this.received.filter((r) => r.msg.type === type);
    }

    meshStatus() {
        let links = 0;
        const users = new Set();
        let members = 0;
        for (const room of this.rooms.values()) {
            const list = [...room.values()];
            members += list.length;
            for (let i = 0; i < list.length; i++) {
                for (let j = i + 1; j < list.length; j++) {
                    if (this.#formed(list[i], list[j])) {
                        links++;
                        users.add(list[i].id);
                        users.add(list[j].id);
                    }
                }
            }
        }
        const nodes = [...new Set([...this.sockets.values()].map((s) => s.node))];
        return {
            nodes: nodes.map((id) => ({ id, epoch: 'fake', sockets: [...this.sockets.values()].filter((s) => s.node === id).length, age_ms: 0, draining: false })),
            rooms: this.rooms.size, active_users: members, p2p_links: links, p2p_users: users.size,
        };
    }
}

// `node fake_node.mjs` runs a fake cluster until interrupted, for trying the demo page by hand.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    const cluster = await startFakeCluster({ turnTtlMs: Number(process.env.FAKE_TURN_TTL_MS || 0) });
    console.log(`nodes: ${cluster.urls.join(' ')}\nadmin: ${cluster.adminUrl} (token ${cluster.adminToken})`);
    process.on('SIGINT', () => { cluster.close(); process.exit(0); });
    process.on('SIGTERM', () => { cluster.close(); process.exit(0); });
}
