// Shared by the tests that drive client/switchboard.js directly in one page against the fake
// nodes of fake_node.mjs (client_protocol.mjs, client_resume.mjs): several clients live in one
// page, each its own "user", and every event each emits is recorded in window.logs[name].
import { waitFor } from './lib.mjs';

// Page side. mk(name, url, room, options) creates a client whose peers get a negotiated data
// channel 't' (id 0); what arrives on it is kept in window.msgs[name][peer]. Every frame a
// client's sockets receive is kept in window.wire[name] (the URL carries ?c=name, which the
// nodes ignore), to check what reached the client and in what order.
export function pageHarness() {
    window.clients = {};
    window.logs = {};
    window.msgs = {};
    window.chans = {};
    window.wire = {};
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
        constructor(url, protocols) {
            super(url, protocols);
            const name = new URL(url).searchParams.get('c');
            if (!name) return;
            const list = (window.wire[name] ||= []);
            this.addEventListener('message', (e) => list.push({ at: performance.now(), url, frame: JSON.parse(e.data) }));
        }
    };
    window.mk = async (name, url, room, extra = {}) => {
        const { Switchboard } = await import('/switchboard.js');
        const log = (window.logs[name] = []);
        window.msgs[name] = {};
        window.chans[name] = {};
        const c = new Switchboard({
            url: `${url}?c=${name}`, room, meta: { name }, reconnect: { minMs: 100, maxMs: 2000 },
            onpeer: ({ id, pc }) => {
                const dc = pc.createDataChannel('t', { negotiated: true, id: 0 });
                window.chans[name][id] = dc;
                const got = (window.msgs[name][id] = []);
                dc.onmessage = (e) => got.push(e.data);
                dc.onclose = () => got.push('<closed>');
            },
            ...extra,
        });
        for (const t of ['connected', 'disconnected', 'joined', 'left', 'peer-joined', 'peer-left', 'peer',
            'peer-state', 'link', 'ice-servers', 'error', 'reconnecting', 'reconnected', 'resume-failed',
            'peer-away', 'peer-back']) {
            c.addEventListener(t, (e) => {
                const d = { ...e.detail };
                delete d.pc;
                if (d.error) d.error = { code: d.error.code, message: d.error.message, reason: d.error.reason };
                log.push({ type: t, at: performance.now(), ...d });
            });
        }
        window.clients[name] = c;
        if (room) await c.connect();
        return c.id;
    };
}

/** Test-side helpers bound to a page and a fake cluster. */
export function clientHelpers(page, fake) {
    const ws = (i) => fake.urls[i].replace('http:', 'ws:') + '/ws';
    const evalIn = (fn, arg) => page.evaluate(fn, arg);
    const events = (name, type) => evalIn(([n, t]) => window.logs[n].filter((e) => !t || e.type === t), [name, type]);
    const clientId = (name) => evalIn((n) => window.clients[n].id, name);
    const peersOf = (name) => evalIn((n) => window.clients[n].peers, name);

    async function waitLinked(a, b, timeoutMs = 10000) {
        const [ia, ib] = [await clientId(a), await clientId(b)];
        await waitFor(`${a} and ${b} to see their link up`, async () => {
            const pa = (await peersOf(a)).find((p) => p.id === ib);
            const pb = (await peersOf(b)).find((p) => p.id === ia);
            return pa && pb && pa.link === 'up' && pb.link === 'up';
        }, { timeoutMs });
    }

    async function waitJoined(name, timeoutMs = 5000) {
        return waitFor(`${name} to be in a room`, () => evalIn((n) => window.clients[n].room && window.clients[n].id, name), { timeoutMs });
    }

    return { ws, evalIn, events, clientId, peersOf, waitLinked, waitJoined };
}
