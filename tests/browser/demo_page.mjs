// The demo page (client/index.html) driven the way a user does, and the cluster figures beside
// it: shared by e2e_webrtc.mjs and e2e_resume.mjs. Pages are described by objects
// {name, url, b (the browser of lib.mjs), id, node, responses, sockets, frames}.
import { assert, openBrowser, waitFor } from './lib.mjs';

// Opens u's browser, records where its page's HTTP responses and WebSockets go and the frames
// its WebSockets receive (parsed; before the first load, so nothing is missed), loads u.url
// and joins through the UI.
export async function openPage(browsers, u) {
    u.b = await openBrowser(u.name);
    browsers.push(u.b);
    u.responses = [];
    u.sockets = [];
    u.frames = [];
    u.b.page.on('response', (r) => u.responses.push(r.url()));
    u.b.page.on('websocket', (ws) => {
        u.sockets.push(ws.url());
        ws.on('framereceived', (f) => {
            try { u.frames.push(JSON.parse(f.payload)); } catch { /* not JSON: not ours */ }
        });
    });
    await u.b.page.goto(u.url, { waitUntil: 'load' });
    await joinThroughUi(u);
}

// Checks that the pages' fetches and WebSockets went to the balancer (and nowhere else) and,
// with its monitor URL, that HAProxy has exactly one current session per page on the server
// of that page's node.
export async function throughLb(lb, pages) {
    const notes = [];
    for (const u of pages) {
        assert(new URL(u.b.page.url()).origin === lb.origin, `${u.name}: page is at ${u.b.page.url()}, not on ${lb.origin}`);
        const elsewhere = u.responses.filter((x) => new URL(x).origin !== lb.origin);
        assert(elsewhere.length === 0, `${u.name}: fetched from elsewhere than ${lb.origin}: ${elsewhere.join(' ')}`);
        const paths = new Set(u.responses.map((x) => new URL(x).pathname));
        for (const p of ['/', '/switchboard.js', '/demo.js', '/demo.css']) {
            assert(paths.has(p), `${u.name}: ${p} not fetched through ${lb.origin} (fetched: ${[...paths].join(' ')})`);
        }
        assert(u.sockets.length > 0, `${u.name}: no WebSocket seen`);
        const wrong = u.sockets.filter((x) => x !== lb.ws);
        assert(wrong.length === 0, `${u.name}: WebSocket to ${wrong.join(' ')}, not ${lb.ws}`);
        notes.push(`${u.name}: ${u.responses.length} fetches and ${u.sockets.length} WebSocket(s) via ${new URL(lb.url).host}, on ${u.node}`);
    }
    if (!lb.monitor) return `${notes.join('; ')}; HAProxy sessions not checked (no SB_LB_MONITOR_URL)`;

    const want = new Map();
    for (const u of pages) want.set(u.node, (want.get(u.node) || 0) + 1);
    let last = null;
    let byName = false;
    try {
        await waitFor(`HAProxy current sessions per server to match the pages' nodes ${JSON.stringify(Object.fromEntries(want))}`, async () => {
            last = await lbSessions(lb.monitor);
            byName = [...want.keys()].every((n) => last.has(n));
            if (byName) return [...new Set([...last.keys(), ...want.keys()])].every((n) => (last.get(n) || 0) === (want.get(n) || 0));
            // Servers not named like the nodes: compare the spread only.
            const spread = (m) => [...m.values()].filter((v) => v > 0).sort().join(',');
            return spread(last) === spread(want);
        }, { timeoutMs: 3000 });
    } catch (e) {
        throw new Error(`${e.message}; HAProxy: ${last ? JSON.stringify(Object.fromEntries(last)) : 'nothing'}`);
    }
    const busy = [...last.entries()].filter(([, v]) => v > 0);
    assert(busy.length >= 2, `HAProxy has sessions on ${busy.length} server(s) only`);
    notes.push(`HAProxy current sessions ${busy.map(([k, v]) => `${k} ${v}`).join(', ')}` +
        (byName ? ' (each on the node its page names)' : ' (server names differ from the node ids: spread compared)'));
    return notes.join('; ');
}

// HAProxy's current sessions per backend server, from its Prometheus /metrics.
export async function lbSessions(monitor) {
    const res = await fetch(`${monitor}/metrics`);
    const text = await res.text();
    if (res.status !== 200) throw new Error(`${monitor}/metrics: HTTP ${res.status}`);
    const sessions = new Map();
    for (const line of text.split('\n')) {
        const m = /^haproxy_server_current_sessions\{([^}]*)\}\s+(\S+)/.exec(line);
        const server = m && /server="([^"]*)"/.exec(m[1]);
        if (server) sessions.set(server[1], (sessions.get(server[1]) || 0) + Number(m[2]));
    }
    if (sessions.size === 0) throw new Error(`${monitor}/metrics has no haproxy_server_current_sessions`);
    return sessions;
}

export async function joinThroughUi(u) {
    const page = u.b.page;
    // The room comes from the URL's #fragment; type it anyway, as a user would.
    await page.fill('#room', u.url.split('#')[1]);
    await page.fill('#name', u.name);
    await page.click('#join');
    await page.waitForSelector('body[data-state="joined"]', { timeout: 10000 });
    u.id = await page.getAttribute('body', 'data-id');
    u.node = await page.getAttribute('body', 'data-node');
    assert(u.id && /^[A-Za-z0-9_-]{22,64}$/.test(u.id), `${u.name}: bad socket id ${u.id}`);
}

// Waits until page `a` shows peer `b` with the given data attributes (chat, conn, link).
export async function waitPeer(a, b, want, timeoutMs = 15000) {
    const sel = `#peers li[data-peer="${b.id}"]` + Object.entries(want).map(([k, v]) => `[data-${k}="${v}"]`).join('');
    try {
        await a.b.page.waitForSelector(sel, { timeout: timeoutMs });
    } catch {
        const [seen, errors] = await a.b.page.evaluate(() => [
            [...document.querySelectorAll('#peers li')].map((li) => ({ ...li.dataset })),
            [...document.querySelectorAll('#log li.error')].map((li) => li.textContent),
        ]);
        throw new Error(`${a.name} does not show ${b.name} as ${JSON.stringify(want)} after ${timeoutMs} ms; ` +
            `peers: ${JSON.stringify(seen)}; errors shown: ${JSON.stringify(errors)}`);
    }
}

export async function sendChat(u, text) {
    await u.b.page.fill('#message', text);
    await u.b.page.click('#send');
    await waitChat(u, `${u.name} (you)`, text);
}

// Waits for a log line from `from` (null: a system line) containing `text`.
export async function waitChat(u, from, text, timeoutMs = 10000) {
    await waitFor(`${u.name} to show "${text}"${from ? ` from ${from}` : ''}`, () => u.b.page.evaluate(([f, t]) =>
        [...document.querySelectorAll('#log li')].some((li) => {
            const who = li.querySelector('.from');
            return (f === null ? !who : who && who.textContent === f) && li.querySelector('.text').textContent.includes(t);
        }), [from, text]), { timeoutMs });
}

export async function meshStatus(admin) {
    const res = await fetch(`${admin.url}/admin/mesh-status`, { headers: { Authorization: `Bearer ${admin.token}` } });
    const body = await res.text();
    if (res.status !== 200) throw new Error(`mesh-status: HTTP ${res.status}: ${body.slice(0, 200)}`);
    return JSON.parse(body);
}

export function figures(s) {
    return `p2p_links ${s.p2p_links}, p2p_users ${s.p2p_users}, active_users ${s.active_users}`;
}

// Polls mesh-status until the figures are `want` above the baseline (other rooms may exist).
export async function waitMesh(admin, baseline, want, timeoutMs) {
    const b = baseline || { p2p_links: 0, p2p_users: 0 };
    let last = null;
    try {
        return await waitFor(`mesh-status p2p_links ${b.p2p_links + want.links}, p2p_users ${b.p2p_users + want.users}`, async () => {
            last = await meshStatus(admin);
            return last.p2p_links === b.p2p_links + want.links && last.p2p_users === b.p2p_users + want.users ? last : null;
        }, { timeoutMs, intervalMs: 25 });
    } catch (e) {
        throw new Error(`${e.message}; last seen: ${last ? figures(last) : 'nothing'}`);
    }
}

// Alice and bob must be on different nodes; bob's page is reloaded at most maxReloads times.
export async function spreadPages(lb, alice, bob, maxReloads) {
    const MAX_RELOADS = maxReloads;
    assert(alice.node && bob.node, `node ids missing: ${alice.node} / ${bob.node}`);
    let reloads = 0;
    // Only through a balancer, and only when it really put both on one node (the node
    // each page's welcome named): a reload opens a new WebSocket, which it may send elsewhere.
    while (lb && alice.node === bob.node && reloads < MAX_RELOADS) {
        reloads++;
        console.log(`# the balancer put alice and bob both on node ${alice.node}: reloading bob's page (${reloads}/${MAX_RELOADS})`);
        await bob.b.page.reload({ waitUntil: 'load' });
        await joinThroughUi(bob);
        console.log(`#   after reload ${reloads}: bob (id ${bob.id.slice(0, 8)}) on node ${bob.node}`);
    }
    assert(alice.node !== bob.node, `both pages are on node ${alice.node}` +
        (lb ? ` after ${reloads} reload(s) of bob's page` : ''));
    return `alice on ${alice.node}, bob on ${bob.node}` + (lb ? `; ${reloads} reload(s) of bob's page` : '');
}
