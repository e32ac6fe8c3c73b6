// Switchboard browser client: one WebSocket to a Switchboard node (protocol switchboard.v1),
// room membership that survives reconnects, and one RTCPeerConnection per peer negotiated with
// the "perfect negotiation" pattern over `signal` messages. It reports `link up` / `link down`
// from what the browser's connections really do, so the server's P2P figures follow reality.
// A lost socket is resumed (same id, room and links, on any node) within the server's grace,
// keeping every RTCPeerConnection.
// It does not create data channels or media tracks: the application adds those in the `peer`
// event (or the `onpeer` option), before negotiation starts. No dependencies, no build step.
// docs/client.md describes the API and how it maps to the protocol.

export const PROTOCOL = 'switchboard.v1';

/** An error from the server (`code` is the protocol's error code) or from this client. */
export class SwitchboardError extends Error {
    constructor(code, message, extra = {}) {
        super(message || code);
        this.name = 'SwitchboardError';
        this.code = code;
        Object.assign(this, extra);
    }
}

const DEFAULTS = {
    reconnect: { minMs: 500, maxMs: 30000 },
    resume: { minMs: 500, maxMs: 5000 },
    requestTimeoutMs: 10000,
    pingIntervalMs: 10000,
    pingTimeoutMs: 5000,
};

// Close codes after which the session is over on the server, so there is nothing to resume:
// the server closed it on purpose (1000), drained an old-style node (1001), refused us by
// policy (1008), or closed it for what we did or for its own failure (1009, 1011, 4003: those
// closes get no grace), reaped it (4000), timed out a socket that never joined (4001) or threw
// it out for abuse (4002). The client reconnects and joins anew (docs/client.md). Every other
// close (1006 above all: a reset, no close frame, a dead node) is resumed.
const NO_RESUME_CLOSES = new Set([1000, 1001, 1008, 1009, 1011, 4000, 4001, 4002, 4003]);

// The server's drain: "resume elsewhere", at once.
const CLOSE_DRAIN = 1012;

// The code this client closes a socket with when it gives up on it but not on its session (a
// ping timeout, a resume that got no answer): not 1000/1001, which would end the session.
const CLOSE_ABANDON = 4900;

// Signals held while the session is away, sent after `resumed`. Past this, a peer's signals
// are dropped and its ICE restarted after the resume, which produces fresh ones.
const MAX_HELD_SIGNALS = 256;

// `join` errors that no retry can fix: the application must change the room or meta.
const PERMANENT_JOIN_ERRORS = new Set(['bad-room', 'bad-message', 'bad-json', 'unknown-type']);

// Close codes the server uses, as error codes for the `error` event. 1001 (draining) and 4000
// (session expired) are routine: the client reconnects and rejoins without reporting an error.
const CLOSE_ERRORS = {
    1009: 'message-too-big',
    1011: 'internal',
    4001: 'auth-timeout',
    4002: 'rate-limit-abuse',
    4003: 'send-queue-overflow',
    1008: 'policy',
};

// Room messages (peer-joined, peer-left, signal, link-state) that may arrive while our own
// `join` is still in flight, kept until `joined` and then applied in order.
const MAX_EARLY_MESSAGES = 1024;

const ROOM_MESSAGES = new Set(['peer-joined', 'peer-left', 'signal', 'link-state', 'peer-away', 'peer-back']);

// setTimeout takes a signed 32-bit delay.
const MAX_TIMER_MS = 0x7fffffff;

/**
 * The TURN REST expiry (unix seconds) of an ICE server entry, from its username
 * `<unix expiry>:<id>`; Infinity when the entry carries none.
 */
export function iceServerExpiry(server) {
    const m = server && typeof server.username === 'string' && /^(\d+):/.exec(server.username);
    return m ? Number(m[1]) : Infinity;
}

/**
 * Milliseconds from `nowMs` until the given ICE servers should be refreshed: 80% of the
 * remaining lifetime of the earliest-expiring credential, at least 1 s; null when none
 * expires. When the credentials look expired already (a client clock ahead of the server's),
 * refreshing at once would return the same answer, so it waits a minute instead.
 */
export function iceRefreshDelay(iceServers, nowMs = Date.now()) {
    let expiry = Infinity;
    for (const s of iceServers || []) expiry = Math.min(expiry, iceServerExpiry(s));
    if (!Number.isFinite(expiry)) return null;
    const remaining = expiry * 1000 - nowMs;
    if (remaining <= 0) return 60000;
    return Math.min(MAX_TIMER_MS, Math.max(1000, Math.floor(remaining * 0.8)));
}

/**
 * The delay before reconnect attempt number `attempt` (0-based): exponential from minMs,
 * capped at maxMs, with "equal jitter" (uniform in [base/2, base]) so that many clients
 * dropped at once do not come back at once. `random` is injectable for tests.
 */
export function backoffDelay(attempt, { minMs, maxMs }, random = Math.random) {
    const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
    return Math.round(base / 2 + (random() * base) / 2);
}

/**
 * The delay before resume attempt number `attempt` (0-based): "full jitter", uniform in
 * [0, min(maxMs, minMs * 2^attempt)], so that the clients of a node that died do not all come
 * back in the same instant, and the first try is often almost immediate.
 */
export function fullJitterDelay(attempt, { minMs, maxMs }, random = Math.random) {
    const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
    return Math.floor(random() * cap);
}

/** The default WebSocket URL: the page's own host, path /ws, ws: or wss: to match. */
export function defaultUrl() {
    if (typeof location === 'undefined') throw new SwitchboardError('bad-option', 'url is required outside a page');
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
}

/**
 * A Switchboard client. Options:
 *   url        WebSocket URL of a node (default: this page's host, path /ws)
 *   room       room to join on connect and rejoin after every reconnect (or call join())
 *   meta       object sent with join (peers see it); at most 1024 bytes serialized
 *   token      JWT string, or a function (async ok) called with {room} before every join/resume
 *   rtcConfig  base RTCConfiguration; the server's ice_servers are appended to its iceServers
 *   reconnect  {minMs, maxMs} backoff bounds (default 500 / 30000), or false for no reconnect
 *   resume     {minMs, maxMs} full-jitter backoff of resume attempts (default 500 / 5000), or
 *              false: a lost socket is never resumed (rejoin with a new id instead)
 *   onpeer     function(detail) called when a peer's RTCPeerConnection is created, before
 *              negotiation; same detail as the `peer` event
 *   requestTimeoutMs, pingIntervalMs, pingTimeoutMs  (10000 / 10000 / 5000)
 *
 * Events (CustomEvent, payload in `event.detail`):
 *   connected     {id, node, limits}          welcome received on a new socket
 *   disconnected  {code, reason, reconnectInMs, resuming} the socket closed (reconnectInMs
 *                                              null: for good; resuming: the session is kept)
 *   reconnecting  {code, reason, graceMs, reconnectInMs} the socket was lost; resuming
 *   reconnected   {id, node, room, peers, joined, left, links, awayMs} resumed: same id
 *   resume-failed {reason, error?}             the session is gone (unknown, grace, ...); the
 *                                              client joins anew by itself
 *   peer-away     {id}  /  peer-back {id}      a peer's socket was lost / it resumed
 *   joined        {room, id, peers}            the server confirmed the join (also after rejoin)
 *   left          {room}                       the server confirmed the leave
 *   peer-joined   {id, meta, initial}          a peer is in the room (initial: listed in joined)
 *   peer          {id, meta, pc, polite}       its RTCPeerConnection exists; add channels/tracks
 *   peer-state    {id, state}                  its connectionState changed
 *   peer-left     {id, reason}                 it is gone; reason leave/disconnect/expired, or
 *                                              local when our own socket closed or we left
 *   link          {peer, state}                the server's link-state (up / down) for a peer
 *   ice-servers   {iceServers}                 new ICE servers (joined or a refresh)
 *   error         {error}                      a SwitchboardError (or a WebRTC error)
 */
export class Switchboard extends EventTarget {
    #opts;
    #ws = null;
    #gen = 0; // bumped for every socket; callbacks of an older socket are ignored
    #state = 'idle'; // idle, connecting, open, reconnecting, closed
    #id = null;
    #node = null;
    #limits = null;
    #room = null; // the room the application wants (rejoined after reconnects)
    #meta;
    #token;
    #joinedRoom = null; // the room the server confirmed
    #joining = false;
    #syncing = false;
    #syncAgain = false;
    #peers = new Map();
    #pending = new Map(); // rid -> {resolve, reject, timer}
    #nextRid = 1;
    #attempt = 0;
    #reconnectTimer = null;
    #welcomeTimer = null;
    #pingTimer = null;
    #iceTimer = null;
    #iceServers = [];
    #early = [];
    #joinWaiters = [];
    #leaveWaiters = [];
    #connectWaiters = [];
    // Resume: the session (#id, #joinedRoom, #peers) outlives its socket while #resuming.
    #resumeToken = null; // from the last joined/resumed; null: nothing to resume
    #graceMs = 0; // limits.resume_grace_ms of the node that issued the token
    #resuming = false;
    #lostAt = 0;
    #graceTimer = null;
    #resumeAttempt = 0;
    #welcomed = false; // the current socket got its welcome
    #welcomeMsg = null; // that welcome
    #held = []; // [{p, data}] signals sent while resuming

    constructor(options = {}) {
        super();
        const reconnect = options.reconnect === false ? false : { ...DEFAULTS.reconnect, ...(options.reconnect || {}) };
        const resume = options.resume === false || !reconnect ? false : { ...DEFAULTS.resume, ...(options.resume || {}) };
        this.#opts = { ...DEFAULTS, ...options, reconnect, resume };
        this.#room = options.room ?? null;
        this.#meta = options.meta;
        this.#token = options.token;
    }

    /** This socket's id (null while not connected). */
    get id() { return this.#id; }
    /** The id of the node this socket is on (the welcome's `node`). */
    get node() { return this.#node; }
    /** The room the server confirmed, or null. */
    get room() { return this.#joinedRoom; }
    /** idle, connecting, open (welcomed), reconnecting (resuming a lost session), or closed. */
    get state() { return this.#state; }
    /** The ICE servers in use: rtcConfig.iceServers followed by the server's. */
    get iceServers() { return this.#rtcConfiguration().iceServers; }
    /** A snapshot of the peers: [{id, meta, polite, connectionState, link, away}]. */
    get peers() {
        return [...this.#peers.values()].map((p) => ({
            id: p.id, meta: p.meta, polite: p.polite, connectionState: p.pc.connectionState, link: p.link, away: p.away,
        }));
    }

    /** The RTCPeerConnection for a peer id, or undefined. */
    peerConnection(id) {
        return this.#peers.get(id)?.pc;
    }

    /**
     * Opens the socket (and joins `room` if one is set). Resolves with {id, node} on the first
     * welcome; keeps retrying with backoff until then; rejects only if close() is called first.
     */
    connect() {
        if (this.#state === 'closed') return Promise.reject(new SwitchboardError('closed', 'client is closed'));
        if (this.#state === 'open') return Promise.resolve({ id: this.#id, node: this.#node });
        const p = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
        if (this.#state === 'idle' && !this.#reconnectTimer) this.#open();
        return p;
    }

    /**
     * Joins `room` (leaving the current one first if it differs), connecting if needed. The
     * room is remembered and rejoined after every reconnect until leave() or close().
     * `meta` and `token` replace the ones given to the constructor when present.
     * Resolves with the `joined` detail; rejects on an error no retry can fix (bad-room,
     * bad-message), or when leave(), close() or another join() supersedes it. Retryable
     * failures (unauthorized, room-full, unavailable, rate-limited) are reported as `error`
     * events and retried with backoff.
     */
    join(room, { meta, token } = {}) {
        if (this.#state === 'closed') return Promise.reject(new SwitchboardError('closed', 'client is closed'));
        if (meta !== undefined) this.#meta = meta;
        if (token !== undefined) this.#token = token;
        if (this.#room !== room) this.#rejectJoinWaiters(new SwitchboardError('cancelled', `join superseded by ${room}`));
        this.#room = room;
        if (this.#joinedRoom === room && !this.#syncing)
            return Promise.resolve({ room, id: this.#id, peers: this.peers });
        const p = new Promise((resolve, reject) => this.#joinWaiters.push({ room, resolve, reject }));
        if (this.#state === 'open') this.#syncRoom();
        else this.connect().catch(() => {});
        return p;
    }

    /** Leaves the room and forgets it (no rejoin). Resolves when the server confirmed it. */
    leave() {
        this.#room = null;
        this.#rejectJoinWaiters(new SwitchboardError('cancelled', 'left'));
        if (!this.#joinedRoom && !this.#joining) return Promise.resolve();
        const p = new Promise((resolve) => this.#leaveWaiters.push(resolve));
        if (this.#state === 'open') this.#syncRoom();
        return p;
    }

    /**
     * Leaves, closes every peer connection and the socket, and stops reconnecting. The
     * client cannot be used again. While reconnecting there is no socket to send `leave` on:
     * the server ends the session when its grace runs out.
     */
    close() {
        if (this.#state === 'closed') return;
        const ws = this.#ws;
        if (ws && ws.readyState === WebSocket.OPEN && this.#joinedRoom && !this.#resuming) this.#send({ type: 'leave' });
        this.#room = null;
        this.#detach();
        this.#endSession();
        if (ws) try { ws.close(1000, 'bye'); } catch { /* already closing */ }
        this.#state = 'closed';
        this.#teardown('local');
        const err = new SwitchboardError('closed', 'client closed');
        for (const w of this.#connectWaiters.splice(0)) w.reject(err);
        this.#rejectJoinWaiters(err);
        this.#emit('disconnected', { code: 1000, reason: 'closed by application', reconnectInMs: null });
    }

    // ---- socket lifecycle ----

    #open() {
        clearTimeout(this.#reconnectTimer);
        this.#reconnectTimer = null;
        const gen = ++this.#gen;
        let ws;
        try {
            ws = new WebSocket(this.#opts.url || defaultUrl(), PROTOCOL);
        } catch (e) {
            // A malformed URL throws at once: retrying cannot help.
            const err = new SwitchboardError('bad-option', `cannot open WebSocket: ${e.message}`);
            this.#emitError(err);
            this.#state = 'idle';
            for (const w of this.#connectWaiters.splice(0)) w.reject(err);
            this.#rejectJoinWaiters(err);
            return;
        }
        this.#ws = ws;
        this.#welcomed = false;
        if (!this.#resuming) this.#state = 'connecting';
        ws.onmessage = (ev) => { if (gen === this.#gen) this.#onMessage(ev.data); };
        ws.onclose = (ev) => { if (gen === this.#gen) this.#onClose(ev.code, ev.reason); };
        ws.onerror = () => {}; // a close event always follows
        // A server that accepts the TCP connection but never welcomes us is as good as down.
        this.#welcomeTimer = setTimeout(() => {
            if (gen === this.#gen) this.#drop(1006, 'no welcome');
        }, this.#opts.requestTimeoutMs);
    }

    // Forgets the current socket: its late events are ignored from now on. With keepSession
    // (a resume follows) the id, the room and the peers stay.
    #detach(keepSession = false) {
        this.#gen++;
        clearTimeout(this.#welcomeTimer);
        clearInterval(this.#pingTimer);
        clearTimeout(this.#iceTimer);
        clearTimeout(this.#reconnectTimer);
        this.#welcomeTimer = this.#pingTimer = this.#iceTimer = this.#reconnectTimer = null;
        const ws = this.#ws;
        if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
        this.#ws = null;
        this.#welcomed = false;
        if (!keepSession) {
            this.#id = null;
            this.#joinedRoom = null;
        }
        this.#joining = false;
        this.#early = [];
        const err = new SwitchboardError('disconnected', 'socket closed');
        for (const [, req] of this.#pending) {
            clearTimeout(req.timer);
            req.reject(err);
        }
        this.#pending.clear();
        for (const resolve of this.#leaveWaiters.splice(0)) resolve();
    }

    // Gives up on a socket that looks dead: a browser reports the close of a silent TCP
    // connection only after its own long timeout, so act as if it had closed now.
    // A socket dropped as dead (1006) is closed with CLOSE_ABANDON, so that a server that still
    // hears us keeps the session for a resume; the other drops end it (1000).
    #drop(code, reason) {
        const ws = this.#ws;
        this.#gen++;
        if (ws) {
            ws.onmessage = ws.onclose = ws.onerror = null;
            try { ws.close(code === 1006 ? CLOSE_ABANDON : 1000, reason); } catch { /* already closing */ }
        }
        this.#onClose(code, reason);
    }

    #onClose(code, reason) {
        // A close that ends the session counts only on the socket that carries it: a resume
        // attempt's socket closing for any reason is just a failed attempt.
        if (this.#opts.resume && this.#state !== 'closed' && this.#resumeToken &&
            (this.#resuming || !NO_RESUME_CLOSES.has(code))) {
            this.#socketLost(code, reason);
            return;
        }
        this.#detach();
        this.#endSession();
        this.#teardown('local');
        if (this.#reportClose(code, reason)) {
            // Being thrown out for abuse, policy or a missing token is no reason to hammer the
            // server: start the backoff several steps up.
            if ((code >= 4001 && code <= 4003) || code === 1008) this.#attempt = Math.max(this.#attempt, 3);
        }
        let delay = null;
        if (this.#opts.reconnect && this.#state !== 'closed') {
            // After a session that worked (attempt 0): 1001 draining reconnects at once (the
            // load balancer sends us to a ready node), 4000 (reaped while the node had lost
            // Redis) soon. A repeat before the next successful join backs off, so a node that
            // keeps closing new sockets is not hammered.
            if ((code === 1001 || code === CLOSE_DRAIN) && this.#attempt === 0) delay = 0;
            else if (code === 4000 && this.#attempt === 0) delay = Math.floor(Math.random() * this.#opts.reconnect.minMs);
            else delay = backoffDelay(this.#attempt, this.#opts.reconnect);
            this.#attempt++;
        }
        this.#state = delay === null ? 'idle' : 'connecting';
        this.#emit('disconnected', { code, reason: reason || '', reconnectInMs: delay, resuming: false });
        if (delay !== null) {
            this.#reconnectTimer = setTimeout(() => { this.#reconnectTimer = null; this.#open(); }, delay);
        }
    }

    // An `error` event for the close codes that mean something went wrong; true if it was one.
    #reportClose(code, reason) {
        if (!CLOSE_ERRORS[code]) return false;
        this.#emitError(new SwitchboardError(CLOSE_ERRORS[code], `server closed the socket: ${code} ${reason || ''}`.trim(), { closeCode: code }));
        return true;
    }

    // ---- resume ----

    // The socket is gone but the server keeps the session (id, room, links, queued signals)
    // for limits.resume_grace_ms: reconnect through the same URL and resume it, keeping the
    // peers and their connections. Called for the first loss and for every failed attempt.
    #socketLost(code, reason) {
        const first = !this.#resuming;
        this.#detach(true);
        this.#reportClose(code, reason);
        if (first) {
            this.#resuming = true;
            this.#resumeAttempt = 0;
            this.#lostAt = Date.now();
            this.#state = 'reconnecting';
            // Measured from when we noticed; the server's grace started no later, so it has
            // usually ended already when this fires.
            this.#graceTimer = setTimeout(() => this.#graceOver(), this.#graceMs);
        }
        // A drain says "resume elsewhere now"; the first attempt after any other loss is
        // often near-immediate too (full jitter from 0).
        const delay = first && code === CLOSE_DRAIN ? 0 : fullJitterDelay(this.#resumeAttempt, this.#opts.resume);
        this.#resumeAttempt++;
        this.#emit('disconnected', { code, reason: reason || '', reconnectInMs: delay, resuming: true });
        if (first) this.#emit('reconnecting', { code, reason: reason || '', graceMs: this.#graceMs, reconnectInMs: delay });
        this.#reconnectTimer = setTimeout(() => { this.#reconnectTimer = null; this.#open(); }, delay);
    }

    // Forgets everything about the resumable session (not the peers: callers tear them down).
    #endSession() {
        clearTimeout(this.#graceTimer);
        this.#graceTimer = null;
        this.#resuming = false;
        this.#resumeToken = null;
        this.#held = [];
    }

    // The session is lost for good: its peers are torn down (peer-left `local`), the app is
    // told, and what follows is an ordinary connect and join with a new id.
    #resumeFailed(reason, error) {
        this.#endSession();
        this.#id = null;
        this.#joinedRoom = null;
        this.#teardown('local');
        clearTimeout(this.#iceTimer);
        this.#iceTimer = null;
        for (const resolve of this.#leaveWaiters.splice(0)) resolve();
        this.#emit('resume-failed', error ? { reason, error } : { reason });
    }

    // The grace has passed since we noticed the loss: the server has ended the session (or is
    // about to). A socket waiting for `resumed` is closed with 1000, which ends the session if
    // the server had just resumed it after all; the next socket joins anew.
    #graceOver() {
        this.#graceTimer = null;
        if (!this.#resuming) return;
        const waiting = this.#ws && this.#welcomed;
        this.#resumeFailed('grace', new SwitchboardError('resume-failed', `not resumed within ${this.#graceMs} ms`));
        this.#state = 'connecting';
        if (waiting) this.#drop(1000, 'resume grace passed');
    }

    // On the welcome of a resume attempt's socket: send `resume` as its first message.
    async #sendResume(gen) {
        let token = this.#token;
        try {
            if (typeof token === 'function') token = await token({ room: this.#joinedRoom });
        } catch (e) {
            this.#emitError(new SwitchboardError('token', `token callback failed: ${e && e.message}`));
            token = undefined; // try anyway: a node without auth needs none
        }
        if (gen !== this.#gen || !this.#resuming) return;
        const msg = { type: 'resume', id: this.#id, room: this.#joinedRoom, resume: this.#resumeToken };
        if (token) msg.token = token;
        try {
            const reply = this.#request(msg);
            if (!this.#pingTimer) this.#startPing();
            await reply;
            // #onResumed has run (from #dispatch, before this promise settled).
        } catch (err) {
            if (gen !== this.#gen || !this.#resuming) return;
            if (err.code === 'disconnected') return; // #onClose schedules the next attempt
            if (err.code === 'timeout') {
                this.#drop(1006, 'no answer to resume');
                return;
            }
            let wait = null;
            if (err.code === 'resume-failed' && err.reason === 'retry') {
                wait = Math.max(0, Number(err.retry_ms) || 0);
            } else if (err.code === 'unavailable' || err.code === 'rate-limited') {
                wait = fullJitterDelay(this.#resumeAttempt++, this.#opts.resume);
            }
            if (wait !== null) {
                // A transient refusal: try the same token again on this socket.
                setTimeout(() => { if (gen === this.#gen && this.#resuming) this.#sendResume(gen); }, Math.min(wait, MAX_TIMER_MS));
                return;
            }
            // `unknown` (no such session, spent or expired token), or a node that does not
            // speak resume (unknown-type): this socket is a fresh one; join with it.
            this.#resumeFailed(err.code === 'resume-failed' ? String(err.reason || 'unknown') : err.code, err);
            this.#adoptSocket();
        }
    }

    // Makes the current (welcomed) socket the client's: its welcome's id, `connected`, join.
    #adoptSocket() {
        const w = this.#welcomeMsg;
        if (!this.#pingTimer) this.#startPing();
        this.#state = 'open';
        this.#id = w.id;
        if (!this.#room) this.#attempt = 0;
        this.#emit('connected', { id: this.#id, node: this.#node, limits: this.#limits });
        for (const c of this.#connectWaiters.splice(0)) c.resolve({ id: this.#id, node: this.#node });
        this.#syncRoom();
    }

    #onResumed(msg) {
        if (!this.#resuming || msg.id !== this.#id || typeof msg.room !== 'string') return;
        const awayMs = Date.now() - this.#lostAt;
        clearTimeout(this.#graceTimer);
        this.#graceTimer = null;
        this.#resuming = false;
        this.#resumeAttempt = 0;
        this.#attempt = 0;
        this.#state = 'open';
        this.#joinedRoom = msg.room;
        this.#takeToken(msg.resume);
        const list = Array.isArray(msg.peers) ? msg.peers.filter((p) => p && typeof p.id === 'string' && p.id !== this.#id) : [];
        const strings = (a) => (Array.isArray(a) ? a.filter((x) => typeof x === 'string') : []);
        const links = new Set(strings(msg.links));
        const now = new Map(list.map((p) => [p.id, p]));
        // Peers that left while we were away are gone; those that joined get connections now
        // (their offers are among the signals queued for us, delivered next).
        for (const id of [...this.#peers.keys()]) if (!now.has(id)) this.#removePeer(id, 'while-away');
        for (const p of list) {
            const known = this.#peers.get(p.id);
            if (known) {
                if (p.meta !== undefined) known.meta = p.meta;
            } else {
                this.#addPeer(p.id, p.meta, false);
            }
            // A peer may have gone away (or come back) while we could not hear it.
            this.#onPeerAway(p.id, p.away === true);
        }
        if (Array.isArray(msg.ice_servers)) this.#setIceServers(msg.ice_servers);
        for (const p of this.#peers.values()) {
            const link = links.has(p.id) ? 'up' : 'down';
            // A formed link has our half; otherwise whether ours survived is unknown, so the
            // connection's state is reported again (`link` is idempotent).
            p.reported = link === 'up' ? 'up' : 'unknown';
            if (p.link !== link) {
                p.link = link;
                this.#emit('link', { peer: p.id, state: link });
            }
        }
        this.#emit('reconnected', {
            id: this.#id, node: this.#node, room: msg.room,
            peers: list.map((p) => ({ id: p.id, meta: p.meta })),
            joined: strings(msg.joined), left: strings(msg.left), links: [...links], awayMs,
        });
        const held = this.#held;
        this.#held = [];
        for (const { p, data } of held) this.#signal(p, data);
        for (const p of [...this.#peers.values()]) {
            this.#syncLink(p);
            if (p.lostSignals && !p.closed) {
                p.lostSignals = false;
                try { p.pc.restartIce(); } catch (e) { this.#emitError(e, p.id); }
            }
        }
        if (!Array.isArray(msg.ice_servers)) this.#scheduleIceRefresh();
        for (const c of this.#connectWaiters.splice(0)) c.resolve({ id: this.#id, node: this.#node });
        this.#resolveJoinWaiters();
        if (this.#room !== this.#joinedRoom) this.#syncRoom();
    }

    // Keeps the latest resume token (joined, resumed) and the grace of the node that gave it.
    #takeToken(token) {
        const grace = Number(this.#limits && this.#limits.resume_grace_ms);
        this.#resumeToken = typeof token === 'string' && token && grace > 0 ? token : null;
        this.#graceMs = grace > 0 ? grace : 0;
    }

    // ---- messages ----

    #send(msg) {
        const ws = this.#ws;
        if (!ws || ws.readyState !== WebSocket.OPEN) return false;
        const text = JSON.stringify(msg);
        const max = this.#limits && Number(this.#limits.max_message_bytes);
        // An oversize frame gets the socket closed (1009): refuse it here instead.
        if (max > 0 && new TextEncoder().encode(text).length > max) {
            this.#emitError(new SwitchboardError('message-too-big', `${msg.type} message of ${text.length} bytes exceeds the server's ${max}`));
            return false;
        }
        ws.send(text);
        return true;
    }

    // Sends msg with a fresh rid; resolves with the reply, rejects with the error reply, a
    // timeout, or 'disconnected' when the socket closes first.
    #request(msg, timeoutMs = this.#opts.requestTimeoutMs) {
        return new Promise((resolve, reject) => {
            const rid = this.#nextRid++;
            const timer = setTimeout(() => {
                this.#pending.delete(rid);
                reject(new SwitchboardError('timeout', `no reply to ${msg.type} within ${timeoutMs} ms`));
            }, timeoutMs);
            this.#pending.set(rid, { resolve, reject, timer });
            if (!this.#send({ ...msg, rid })) {
                clearTimeout(timer);
                this.#pending.delete(rid);
                reject(new SwitchboardError('disconnected', 'not connected'));
            }
        });
    }

    #onMessage(text) {
        let msg;
        try {
            msg = JSON.parse(text);
        } catch {
            return; // not ours to fix; the protocol has no error for server frames
        }
        if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
        if (ROOM_MESSAGES.has(msg.type) && !this.#joinedRoom) {
            // Whether a node can deliver these before our `joined` is its business; if it
            // does, they belong after it.
            if (this.#joining && this.#early.length < MAX_EARLY_MESSAGES) this.#early.push(msg);
            return;
        }
        this.#dispatch(msg);
        if (msg.rid !== undefined) {
            const req = this.#pending.get(msg.rid);
            if (req) {
                this.#pending.delete(msg.rid);
                clearTimeout(req.timer);
                if (msg.type === 'error') {
                    const extra = {};
                    if (msg.reason !== undefined) extra.reason = msg.reason;
                    if (msg.retry_ms !== undefined) extra.retry_ms = msg.retry_ms;
                    req.reject(new SwitchboardError(String(msg.code), msg.message, extra));
                }
                else req.resolve(msg);
            }
        }
    }

    #dispatch(msg) {
        switch (msg.type) {
        case 'welcome': this.#onWelcome(msg); break;
        case 'joined': this.#onJoined(msg); break;
        case 'resumed': this.#onResumed(msg); break;
        case 'peer-away': this.#onPeerAway(msg.id, true); break;
        case 'peer-back': this.#onPeerAway(msg.id, false); break;
        case 'left': this.#onLeft(msg); break;
        case 'peer-joined': if (typeof msg.id === 'string') this.#addPeer(msg.id, msg.meta, false); break;
        case 'peer-left': this.#removePeer(msg.id, typeof msg.reason === 'string' ? msg.reason : 'leave'); break;
        case 'signal': this.#onSignal(msg); break;
        case 'link-state': this.#onLinkState(msg); break;
        case 'ice-servers': if (Array.isArray(msg.ice_servers)) this.#setIceServers(msg.ice_servers); break;
        case 'error':
            if (msg.rid === undefined && !isBenign(msg.code)) {
                this.#emitError(new SwitchboardError(String(msg.code), msg.message));
            }
            break;
        default: break; // pong, signal-ack, link-ack, and types of later versions
        }
    }

    #onWelcome(msg) {
        if (this.#welcomed || this.#state === 'closed' || typeof msg.id !== 'string') return;
        clearTimeout(this.#welcomeTimer);
        this.#welcomeTimer = null;
        this.#welcomed = true;
        this.#welcomeMsg = msg;
        this.#node = typeof msg.node === 'string' ? msg.node : null;
        this.#limits = msg.limits && typeof msg.limits === 'object' ? msg.limits : null;
        const gen = this.#gen;
        if (this.#resuming) {
            // The welcome's id is discarded if the resume succeeds. A node that offers no
            // resume (grace 0, e.g. an older version mid-rollout) cannot take the session.
            if (Number(this.#limits && this.#limits.resume_grace_ms) > 0) {
                this.#sendResume(gen);
                return;
            }
            this.#resumeFailed('unsupported', new SwitchboardError('resume-failed', `node ${this.#node} does not offer resume`));
        }
        this.#adoptSocket();
    }

    // The liveness check of the current socket: a `ping` every pingIntervalMs, dropped (and
    // resumed) without a `pong` within pingTimeoutMs. Started after `resume` went out, which
    // must be the socket's first message.
    #startPing() {
        const gen = this.#gen;
        clearInterval(this.#pingTimer);
        this.#pingTimer = setInterval(() => {
            this.#request({ type: 'ping' }, this.#opts.pingTimeoutMs).catch((err) => {
                if (gen === this.#gen && err.code === 'timeout') this.#drop(1006, 'ping timeout');
            });
        }, this.#opts.pingIntervalMs);
    }

    // Brings the server's room membership in line with what the application asked for; one
    // run at a time, looping while join()/leave() change the target underneath it.
    async #syncRoom() {
        if (this.#syncing) {
            this.#syncAgain = true;
            return;
        }
        this.#syncing = true;
        const gen = this.#gen;
        try {
            do {
                this.#syncAgain = false;
                if (gen !== this.#gen || this.#state !== 'open') return;
                if (this.#joinedRoom && this.#joinedRoom !== this.#room) {
                    try {
                        await this.#request({ type: 'leave' });
                    } catch (err) {
                        if (gen !== this.#gen) return;
                        if (err.code === 'not-joined') {
                            this.#onLeft({}); // the server says we are in no room: agree
                        } else {
                            this.#emitError(err);
                            this.#drop(1000, 'leave failed'); // a fresh socket is in no room
                            return;
                        }
                    }
                }
                if (this.#room && !this.#joinedRoom) {
                    if (!(await this.#join(gen))) return;
                }
            } while (this.#syncAgain);
        } finally {
            this.#syncing = false;
            if (this.#joinedRoom && this.#joinedRoom === this.#room) this.#resolveJoinWaiters();
            // A call that arrived while this run was awaiting (maybe on a socket that has
            // since been replaced) starts a fresh run on the current socket.
            if (this.#syncAgain) {
                this.#syncAgain = false;
                this.#syncRoom();
            }
        }
    }

    // One join attempt; true when the loop in #syncRoom may go on.
    async #join(gen) {
        const room = this.#room;
        let token = this.#token;
        try {
            if (typeof token === 'function') token = await token({ room });
        } catch (e) {
            this.#emitError(new SwitchboardError('token', `token callback failed: ${e && e.message}`));
            if (gen === this.#gen) this.#drop(1000, 'no token'); // retry with backoff
            return false;
        }
        if (gen !== this.#gen) return false;
        if (room !== this.#room) return true; // superseded while the token was fetched
        const msg = { type: 'join', room };
        if (this.#meta !== undefined && this.#meta !== null) msg.meta = this.#meta;
        if (token) msg.token = token;
        this.#joining = true;
        try {
            await this.#request(msg);
            return true;
        } catch (err) {
            if (gen !== this.#gen) return false;
            this.#joining = false;
            this.#early = [];
            if (err.code === 'already-joined') {
                // We lost track of our own state: a fresh socket is in no room.
                this.#drop(1000, 'already joined');
                return false;
            }
            this.#emitError(err);
            if (PERMANENT_JOIN_ERRORS.has(err.code)) {
                this.#room = null;
                this.#rejectJoinWaiters(err);
                for (const resolve of this.#leaveWaiters.splice(0)) resolve();
                return false;
            }
            // unauthorized, room-full, unavailable, rate-limited, internal, timeout: try again
            // later on a fresh socket, which a load balancer may place on a healthier node.
            this.#drop(1000, `join failed: ${err.code}`);
            return false;
        }
    }

    #onJoined(msg) {
        if (typeof msg.room !== 'string') return;
        this.#joining = false;
        this.#joinedRoom = msg.room;
        this.#takeToken(msg.resume);
        this.#attempt = 0;
        this.#iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
        this.#scheduleIceRefresh();
        const peers = Array.isArray(msg.peers) ? msg.peers.filter((p) => p && typeof p.id === 'string' && p.id !== this.#id) : [];
        this.#emit('joined', { room: msg.room, id: this.#id, peers: peers.map((p) => ({ id: p.id, meta: p.meta })) });
        this.#emit('ice-servers', { iceServers: this.iceServers });
        for (const p of peers) this.#addPeer(p.id, p.meta, true);
        const early = this.#early;
        this.#early = [];
        for (const m of early) this.#dispatch(m);
        this.#resolveJoinWaiters();
        // join() or leave() was called for another room while this join was in flight.
        if (this.#room !== msg.room) this.#syncRoom();
    }

    #onLeft(msg) {
        const room = this.#joinedRoom;
        this.#joinedRoom = null;
        this.#joining = false;
        clearTimeout(this.#iceTimer);
        this.#iceTimer = null;
        this.#teardown('local');
        this.#emit('left', { room: typeof msg.room === 'string' ? msg.room : room });
        for (const resolve of this.#leaveWaiters.splice(0)) resolve();
    }

    // Resolves the join() promises for the room we are in now.
    #resolveJoinWaiters() {
        const room = this.#joinedRoom;
        const waiters = this.#joinWaiters;
        this.#joinWaiters = [];
        for (const w of waiters) {
            if (w.room === room) w.resolve({ room, id: this.#id, peers: this.peers });
            else this.#joinWaiters.push(w);
        }
    }

    #rejectJoinWaiters(err) {
        for (const w of this.#joinWaiters.splice(0)) w.reject(err);
    }

    // ---- peers and perfect negotiation ----

    #rtcConfiguration() {
        const base = this.#opts.rtcConfig || {};
        return { ...base, iceServers: [...(base.iceServers || []), ...this.#iceServers] };
    }

    #addPeer(id, meta, initial) {
        if (id === this.#id) return;
        const known = this.#peers.get(id);
        if (known) {
            // A repeated peer-joined (e.g. after the node resynced the room) is harmless.
            if (meta !== undefined) known.meta = meta;
            return;
        }
        const pc = new RTCPeerConnection(this.#rtcConfiguration());
        const p = {
            id, meta, pc,
            // The socket with the smaller id yields in an offer collision (the polite side).
            polite: this.#id < id,
            makingOffer: false, ignoreOffer: false, answerPending: false,
            offering: null, // settles when our setLocalDescription(offer) in flight is done
            offerGathered: true, // our latest local offer has produced a candidate (or gathered all)
            gatherWaiters: [],
            reported: 'down', // the last link state we told the server
            reporting: false,
            link: 'down', // the last link-state the server told us
            away: false, // the server said peer-away (its socket is lost, it may resume)
            lostSignals: false, // signals to it were dropped while we resumed: restart ICE after
            queue: Promise.resolve(), // incoming signals, applied one at a time
            closed: false,
        };
        this.#peers.set(id, p);
        pc.onnegotiationneeded = () => this.#negotiate(p);
        pc.onicecandidate = ({ candidate }) => {
            this.#offerGathered(p); // a candidate, or null for the end of gathering
            if (candidate && !p.closed) this.#signal(p, { candidate: candidate.toJSON() });
        };
        pc.onicegatheringstatechange = () => {
            if (pc.iceGatheringState === 'complete') this.#offerGathered(p);
        };
        pc.onconnectionstatechange = () => this.#onConnectionState(p);
        this.#emit('peer-joined', { id, meta, initial });
        const detail = { id, meta, pc, polite: p.polite };
        if (typeof this.#opts.onpeer === 'function') {
            try {
                this.#opts.onpeer(detail);
            } catch (e) {
                this.#emitError(e);
            }
        }
        this.#emit('peer', detail);
    }

    #removePeer(id, reason) {
        const p = this.#peers.get(id);
        if (!p) return; // a repeated peer-left is harmless
        this.#closePeer(p);
        this.#emit('peer-left', { id, reason });
    }

    // Closes a peer's connection without reporting link down: either the server already
    // ended the link (peer-left), or our own socket is gone and the server ends it for us.
    #closePeer(p) {
        p.closed = true;
        this.#peers.delete(p.id);
        const pc = p.pc;
        pc.onnegotiationneeded = pc.onicecandidate = pc.onconnectionstatechange = pc.onicegatheringstatechange = null;
        this.#offerGathered(p);
        try { pc.close(); } catch { /* already closed */ }
    }

    #teardown(reason) {
        for (const p of [...this.#peers.values()]) {
            this.#closePeer(p);
            this.#emit('peer-left', { id: p.id, reason });
        }
    }

    // While resuming, signals are held (the connection goes on negotiating) and sent after
    // `resumed`; past MAX_HELD_SIGNALS the peer gets an ICE restart after the resume instead.
    #signal(p, data) {
        if (p.closed) return;
        if (this.#resuming) {
            if (this.#held.length < MAX_HELD_SIGNALS) this.#held.push({ p, data });
            else p.lostSignals = true;
            return;
        }
        this.#send({ type: 'signal', to: p.id, data });
    }

    #onPeerAway(id, away) {
        const p = typeof id === 'string' && this.#peers.get(id);
        if (!p || p.away === away) return; // a repeat is harmless
        p.away = away;
        this.#emit(away ? 'peer-away' : 'peer-back', { id });
    }

    async #negotiate(p) {
        const pc = p.pc;
        let done;
        p.offering = new Promise((resolve) => { done = resolve; });
        try {
            p.makingOffer = true;
            p.offerGathered = false;
            await pc.setLocalDescription();
            if (!p.closed && pc.localDescription) this.#signal(p, { description: pc.localDescription.toJSON() });
        } catch (e) {
            if (!p.closed) this.#emitError(e, p.id);
        } finally {
            p.makingOffer = false;
            p.offering = null;
            done();
        }
    }

    #onSignal(msg) {
        if (typeof msg.from !== 'string') return;
        const p = this.#peers.get(msg.from);
        if (!p) return; // its peer-joined always comes first: this one has left already
        const data = msg.data;
        if (!data || typeof data !== 'object') return;
        p.queue = p.queue
            .then(() => this.#applySignal(p, data))
            .catch((e) => { if (!p.closed) this.#emitError(e, p.id); });
    }

    // Perfect negotiation (W3C WebRTC 1.0, section 10.7): the impolite side ignores an offer
    // that collides with its own; the polite side rolls its own back (implicitly, in
    // setRemoteDescription) and answers.
    async #applySignal(p, { description, candidate }) {
        if (p.closed) return;
        const pc = p.pc;
        if (description && typeof description === 'object') {
            // Chromium (seen in 156) may never gather candidates again when an offer's
            // setLocalDescription is still running as setRemoteDescription rolls it back, so
            // let our own offer finish first; the collision rules below work the same.
            while (p.offering) await p.offering;
            if (p.closed) return;
            const readyForOffer = !p.makingOffer && (pc.signalingState === 'stable' || p.answerPending);
            const collision = description.type === 'offer' && !readyForOffer;
            p.ignoreOffer = !p.polite && collision;
            if (p.ignoreOffer) return;
            // Chromium (seen in 156) never gathers again on a connection whose local offer is
            // rolled back before that offer produced its first candidate; even an ICE restart
            // does not revive it. So the polite side lets gathering start before yielding.
            if (collision && pc.signalingState === 'have-local-offer') await this.#untilOfferGathered(p);
            if (p.closed) return;
            p.answerPending = description.type === 'answer';
            try {
                await pc.setRemoteDescription(description);
            } finally {
                p.answerPending = false;
            }
            if (description.type === 'offer' && !p.closed) {
                await pc.setLocalDescription();
                if (pc.localDescription) this.#signal(p, { description: pc.localDescription.toJSON() });
            }
        } else if (candidate !== undefined) {
            try {
                await pc.addIceCandidate(candidate);
            } catch (e) {
                // Candidates of an offer we ignored fail to apply; that is expected.
                if (!p.ignoreOffer && !p.closed) throw e;
            }
        }
    }

    #offerGathered(p) {
        p.offerGathered = true;
        for (const resolve of p.gatherWaiters.splice(0)) resolve();
    }

    // Resolves once our local offer has produced a candidate or finished gathering, or after
    // 2 s: host candidates take milliseconds, so the bound only matters for a machine without
    // any usable interface.
    #untilOfferGathered(p) {
        if (p.offerGathered || p.closed) return Promise.resolve();
        return new Promise((resolve) => {
            const timer = setTimeout(() => this.#offerGathered(p), 2000);
            p.gatherWaiters.push(() => { clearTimeout(timer); resolve(); });
        });
    }

    #onConnectionState(p) {
        if (p.closed) return;
        const state = p.pc.connectionState;
        this.#emit('peer-state', { id: p.id, state });
        if (state === 'failed') {
            // Renegotiates with fresh ICE credentials; the link comes up again on `connected`.
            try { p.pc.restartIce(); } catch (e) { this.#emitError(e, p.id); }
        }
        this.#syncLink(p);
    }

    // Tells the server the link state the browser really has: up on `connected`, down on
    // `failed` or `closed`; `disconnected` is often transient and changes nothing. One request
    // at a time per peer; a transient failure is retried while the peer is still here.
    #syncLink(p) {
        if (p.closed || p.reporting || this.#resuming) return; // #onResumed calls it again
        const cs = p.pc.connectionState;
        const want = cs === 'connected' ? 'up' : cs === 'failed' || cs === 'closed' ? 'down' : p.reported;
        if (want === p.reported) return;
        const gen = this.#gen;
        p.reporting = true;
        this.#request({ type: 'link', peer: p.id, state: want }).then(
            () => {
                p.reporting = false;
                p.reported = want;
                this.#syncLink(p);
            },
            (err) => {
                p.reporting = false;
                // peer-not-found: it left and its peer-left is on the way. disconnected: the
                // server ends our links itself.
                if (p.closed || gen !== this.#gen || err.code === 'peer-not-found' || err.code === 'disconnected') return;
                this.#emitError(err, p.id);
                setTimeout(() => this.#syncLink(p), 1000);
            },
        );
    }

    #onLinkState(msg) {
        const p = this.#peers.get(msg.peer);
        if (!p || (msg.state !== 'up' && msg.state !== 'down')) return;
        p.link = msg.state;
        this.#emit('link', { peer: msg.peer, state: msg.state });
    }

    // ---- ICE servers ----

    #setIceServers(list) {
        this.#iceServers = list;
        const config = this.#rtcConfiguration();
        for (const p of this.#peers.values()) {
            try {
                p.pc.setConfiguration(config);
            } catch (e) {
                this.#emitError(e, p.id);
            }
        }
        this.#emit('ice-servers', { iceServers: config.iceServers });
        this.#scheduleIceRefresh();
    }

    // TURN REST credentials expire (username `<unix expiry>:<id>`): fetch new ones at 80% of
    // their remaining lifetime, so that ICE restarts and new connections never use stale ones.
    #scheduleIceRefresh() {
        clearTimeout(this.#iceTimer);
        this.#iceTimer = null;
        const delay = iceRefreshDelay(this.#iceServers);
        if (delay === null) return;
        const gen = this.#gen;
        this.#iceTimer = setTimeout(() => {
            this.#iceTimer = null;
            if (gen !== this.#gen || !this.#joinedRoom || this.#resuming) return;
            this.#request({ type: 'ice-servers' }).catch((err) => {
                if (gen !== this.#gen || err.code === 'disconnected') return;
                this.#emitError(err);
                if (!this.#iceTimer) this.#iceTimer = setTimeout(() => this.#scheduleIceRefresh(), 10000);
            });
        }, delay);
    }

    // ---- events ----

    #emit(type, detail) {
        this.dispatchEvent(new CustomEvent(type, { detail }));
    }

    #emitError(error, peer) {
        this.#emit('error', peer === undefined ? { error } : { error, peer });
    }
}

// Errors that only say a peer left before our message reached it; its peer-left follows.
function isBenign(code) {
    return code === 'peer-not-found';
}
