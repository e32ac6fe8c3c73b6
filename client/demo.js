// The demo page served at `/`: join a room, see the peers and the state of each link, and chat
// over WebRTC data channels. It only uses the public API of switchboard.js. State that tests
// read is mirrored in data attributes: <body data-state data-conn data-resumes data-id
// data-node data-room> and, per peer, <li data-peer data-conn data-link data-chat data-away>.
// data-conn is the connection as the user sees it: connecting, connected, reconnecting (the
// socket was lost, the session is being resumed and the calls go on), reconnected (resumed:
// same id, same calls), or idle.
import { Switchboard } from './switchboard.js';

const $ = (id) => document.getElementById(id);
const body = document.body;
const peerList = $('peers');
const log = $('log');

// One data channel per peer, negotiated out of band (same id on both sides): both ends have
// it at once, without waiting for an `ondatachannel`.
const CHAT_CHANNEL = { negotiated: true, id: 0, ordered: true };

let sb = null;
const channels = new Map(); // peer id -> RTCDataChannel

function displayName(meta, id) {
    const name = meta && typeof meta.name === 'string' ? meta.name.trim() : '';
    return name || `guest-${String(id).slice(0, 4)}`;
}

function setStatus(text) {
    $('status').textContent = text;
}

function setConn(state) {
    body.dataset.conn = state;
    $('conn').textContent = state;
}

function addLog(kind, from, text) {
    const li = document.createElement('li');
    li.className = kind;
    if (from !== null) {
        const who = document.createElement('span');
        who.className = 'from';
        who.textContent = from;
        li.append(who);
    }
    const what = document.createElement('span');
    what.className = 'text';
    what.textContent = text;
    li.append(what);
    log.append(li);
    li.scrollIntoView({ block: 'nearest' });
}

// ---- peer list ----

function peerName(id) {
    const li = peerItem(id);
    return li ? li.querySelector('.name').textContent : displayName(null, id);
}

function peerItem(id) {
    return peerList.querySelector(`li[data-peer="${CSS.escape(id)}"]`);
}

function badge(cls, label) {
    const b = document.createElement('span');
    b.className = `badge ${cls}`;
    b.title = label;
    return b;
}

function renderPeer(id, meta) {
    let li = peerItem(id);
    if (!li) {
        li = document.createElement('li');
        li.dataset.peer = id;
        li.dataset.conn = 'new';
        li.dataset.link = 'down';
        li.dataset.chat = 'connecting';
        li.dataset.away = 'false';
        const name = document.createElement('span');
        name.className = 'name';
        const pid = document.createElement('code');
        pid.className = 'pid';
        pid.textContent = id.slice(0, 8);
        pid.title = id;
        const states = document.createElement('span');
        states.className = 'states';
        states.append(badge('conn', 'WebRTC connection state'), badge('link', 'link state confirmed by the server'),
            badge('chat', 'chat channel'), badge('away', 'its signaling connection dropped; it may come back'));
        li.append(name, pid, states);
        peerList.append(li);
    }
    li.querySelector('.name').textContent = displayName(meta, id);
    updatePeer(id);
    updateCounts();
}

function updatePeer(id, changes = {}) {
    const li = peerItem(id);
    if (!li) return;
    Object.assign(li.dataset, changes);
    li.querySelector('.badge.conn').textContent = `webrtc: ${li.dataset.conn}`;
    li.querySelector('.badge.link').textContent = `link: ${li.dataset.link}`;
    li.querySelector('.badge.chat').textContent = `chat: ${li.dataset.chat}`;
    li.querySelector('.badge.away').textContent = li.dataset.away === 'true' ? 'away' : '';
}

function updateCounts() {
    const n = peerList.children.length;
    $('peer-count').textContent = String(n);
    $('no-peers').hidden = n > 0 || body.dataset.state !== 'joined';
    const open = [...channels.values()].some((dc) => dc.readyState === 'open');
    $('message').disabled = $('send').disabled = !open;
}

// ---- Switchboard wiring ----

function start(room, name) {
    if (sb) sb.close();
    channels.clear();
    peerList.replaceChildren();
    sb = new Switchboard({ room, meta: { name } });
    const me = sb;
    const on = (type, fn) => me.addEventListener(type, (ev) => { if (me === sb) fn(ev.detail); });

    body.dataset.state = 'connecting';
    body.dataset.resumes = '0';
    setConn('connecting');
    setStatus('Connecting...');

    on('connected', ({ id, node }) => {
        body.dataset.id = id;
        body.dataset.node = node || '';
        body.dataset.state = 'connected';
        setConn('connected');
        setStatus(`Connected to node ${node} as ${id.slice(0, 8)}, joining ${room}...`);
    });
    on('joined', ({ room: r, id, peers }) => {
        body.dataset.room = r;
        body.dataset.state = 'joined';
        setStatus(`In room ${r} on node ${me.node} as ${displayName({ name }, id)} (${id.slice(0, 8)})`);
        addLog('system', null, `You joined ${r}; ${peers.length} other${peers.length === 1 ? '' : 's'} here.`);
        $('leave').disabled = false;
        updateCounts();
    });
    on('disconnected', ({ code, reconnectInMs, resuming }) => {
        if (reconnectInMs === null) {
            delete body.dataset.room;
            body.dataset.state = 'idle';
            setConn('idle');
            return;
        }
        body.dataset.state = 'reconnecting';
        setConn('reconnecting');
        if (resuming) {
            // The room, the peers and the calls stay: only the signaling socket is gone.
            setStatus(`Connection lost (${code}); resuming in ${(reconnectInMs / 1000).toFixed(1)} s, calls go on...`);
            return;
        }
        delete body.dataset.room;
        setStatus(`Disconnected (${code}); reconnecting in ${(reconnectInMs / 1000).toFixed(1)} s...`);
    });
    on('reconnecting', ({ graceMs }) => {
        addLog('system', null, `Connection lost; resuming (the room keeps your place for ${(graceMs / 1000).toFixed(0)} s).`);
    });
    on('reconnected', ({ id, node, room: r, awayMs }) => {
        body.dataset.state = 'joined';
        body.dataset.room = r;
        body.dataset.node = node || '';
        body.dataset.resumes = String(Number(body.dataset.resumes || 0) + 1);
        setConn('reconnected');
        setStatus(`Reconnected to node ${node} as ${displayName({ name }, id)} (${id.slice(0, 8)}), same session, in room ${r}`);
        addLog('system', null, `Reconnected after ${(awayMs / 1000).toFixed(1)} s; nothing was lost.`);
    });
    on('resume-failed', ({ reason }) => {
        addLog('system', null, `Could not resume (${reason}); joining again as a new participant.`);
    });
    on('peer-away', ({ id }) => {
        updatePeer(id, { away: 'true' });
        addLog('system', null, `${peerName(id)} lost their connection; waiting for them to come back.`);
    });
    on('peer-back', ({ id }) => {
        updatePeer(id, { away: 'false' });
        addLog('system', null, `${peerName(id)} is back.`);
    });
    on('left', () => {
        delete body.dataset.room;
        body.dataset.state = 'connected';
        setStatus('Not in a room');
        $('leave').disabled = true;
        updateCounts();
    });
    on('peer-joined', ({ id, meta, initial }) => {
        renderPeer(id, meta);
        if (!initial) addLog('system', null, `${displayName(meta, id)} joined.`);
    });
    on('peer', ({ id, meta, pc }) => {
        const dc = pc.createDataChannel('chat', CHAT_CHANNEL);
        channels.set(id, dc);
        const sync = () => { updatePeer(id, { chat: dc.readyState }); updateCounts(); };
        dc.onopen = dc.onclose = sync;
        dc.onmessage = (ev) => {
            if (typeof ev.data !== 'string') return;
            const peer = me.peers.find((p) => p.id === id);
            addLog('chat', displayName(peer ? peer.meta : meta, id), ev.data.slice(0, 2000));
        };
    });
    on('peer-state', ({ id, state }) => updatePeer(id, { conn: state }));
    on('link', ({ peer, state }) => updatePeer(peer, { link: state }));
    on('peer-left', ({ id, reason }) => {
        const li = peerItem(id);
        channels.delete(id);
        if (li) {
            if (reason !== 'local') addLog('system', null, `${peerName(id)} left (${reason}).`);
            li.remove();
        }
        updateCounts();
    });
    on('error', ({ error }) => {
        addLog('error', null, `${error.code || error.name}: ${error.message}`);
    });
    me.connect().catch(() => {});
}

// ---- form handlers ----

$('join-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const room = $('room').value.trim();
    const name = $('name').value.trim() || `guest-${Math.random().toString(36).slice(2, 6)}`;
    $('name').value = name;
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(room)) {
        setStatus('A room name is 1 to 64 letters, digits, dots, dashes or underscores.');
        return;
    }
    if (location.hash !== `#${room}`) history.replaceState(null, '', `#${room}`);
    start(room, name);
});

$('leave').addEventListener('click', () => {
    if (sb) sb.close();
    sb = null;
    channels.clear();
    peerList.replaceChildren();
    delete body.dataset.room;
    body.dataset.state = 'idle';
    setConn('idle');
    setStatus('Not connected');
    $('leave').disabled = true;
    updateCounts();
});

$('chat-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = $('message').value;
    if (!text.trim()) return;
    let sent = 0;
    for (const dc of channels.values()) {
        if (dc.readyState === 'open') {
            dc.send(text);
            sent++;
        }
    }
    if (sent) {
        addLog('chat mine', `${$('name').value} (you)`, text);
        $('message').value = '';
    }
});

// Leave cleanly when the tab goes away, so peers see `leave` rather than a timeout.
window.addEventListener('pagehide', () => { if (sb) sb.close(); });

const fromHash = decodeURIComponent(location.hash.slice(1));
if (/^[A-Za-z0-9._-]{1,64}$/.test(fromHash)) $('room').value = fromHash;
updateCounts();
