// Page side of e2e_peerjs.mjs: drives the real PeerJS client (window.Peer, from
// node_modules/peerjs/dist/peerjs.min.js) and records everything it reports, so the test can
// poll window.pj.state() from Node. Nothing here decides pass or fail.
'use strict';
(() => {
    const events = []; // {kind, at, ...}: open, disconnected, close, error, incoming, call
    const conns = new Map(); // connectionId -> DataConnection record
    const calls = new Map(); // connectionId -> MediaConnection record
    let peer = null;
    let localStream = null;

    function ev(kind, detail) {
        events.push({ kind, at: Date.now(), ...detail });
    }

    async function media() {
        if (!localStream) localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
        return localStream;
    }

    function watchData(conn, incoming) {
        const rec = { id: conn.connectionId, peer: conn.peer, incoming, open: false, closed: false, got: [], errors: [] };
        conns.set(conn.connectionId, { conn, rec });
        conn.on('open', () => { rec.open = true; });
        conn.on('data', (d) => rec.got.push(d));
        conn.on('close', () => { rec.closed = true; });
        conn.on('error', (e) => rec.errors.push(`${e.type}: ${e.message}`));
    }

    function watchCall(call, incoming) {
        const rec = { id: call.connectionId, peer: call.peer, incoming, stream: null, closed: false, errors: [] };
        calls.set(call.connectionId, { call, rec });
        call.on('stream', (s) => {
            rec.stream = s;
        });
        call.on('close', () => { rec.closed = true; });
        call.on('error', (e) => rec.errors.push(`${e.type}: ${e.message}`));
    }

    // id: the id to claim, or null for one from the server.
    function start(id, options) {
        peer = id ? new window.Peer(id, options) : new window.Peer(options);
        peer.on('open', (id) => ev('open', { id }));
        peer.on('disconnected', (id) => ev('disconnected', { id }));
        peer.on('close', () => ev('close', {}));
        peer.on('error', (e) => ev('error', { type: e.type, msg: String(e.message) }));
        peer.on('connection', (conn) => {
            ev('incoming', { peer: conn.peer, id: conn.connectionId });
            watchData(conn, true);
        });
        peer.on('call', async (call) => {
            ev('call', { peer: call.peer, id: call.connectionId });
            watchCall(call, true);
            call.answer(await media());
        });
    }

    window.pj = {
        start,
        // Ends the Peer (its id is released: the socket closes normally) for a new start().
        destroy() {
            peer.destroy();
            conns.clear();
            calls.clear();
            events.length = 0;
        },
        reconnect() { peer.reconnect(); },
        connect(id) {
            const conn = peer.connect(id, { reliable: true });
            watchData(conn, false);
            return conn.connectionId;
        },
        send(connectionId, messages) {
            const { conn } = conns.get(connectionId);
            for (const m of messages) conn.send(m);
        },
        async call(id) {
            const call = peer.call(id, await media());
            watchCall(call, false);
            return call.connectionId;
        },
        // Bytes received per kind (audio, video) on a call's inbound RTP streams.
        async inbound(connectionId) {
            const { call } = calls.get(connectionId);
            const bytes = {};
            (await call.peerConnection.getStats()).forEach((r) => {
                if (r.type === 'inbound-rtp') bytes[r.kind] = (bytes[r.kind] || 0) + r.bytesReceived;
            });
            return bytes;
        },
        state() {
            return {
                id: peer && peer.id,
                open: !!(peer && peer.open),
                disconnected: !!(peer && peer.disconnected),
                destroyed: !!(peer && peer.destroyed),
                events: events.slice(),
                conns: [...conns.values()].map(({ conn, rec }) => ({ ...rec, got: rec.got.slice(), ice: conn.peerConnection?.iceConnectionState })),
                calls: [...calls.values()].map(({ call, rec }) => ({
                    id: rec.id, peer: rec.peer, incoming: rec.incoming, closed: rec.closed, errors: rec.errors,
                    ice: call.peerConnection?.iceConnectionState,
                    remote: rec.stream ? rec.stream.getTracks().map((tr) => ({ kind: tr.kind, state: tr.readyState, muted: tr.muted })) : null,
                })),
            };
        },
    };
})();
