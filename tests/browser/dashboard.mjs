// The admin dashboard in real headless Chromium: the page loads under its CSP, refuses a wrong
// token (an error, no figures), accepts the right one, shows the figures mesh-status returns,
// follows a change made through a real node (two WebSocket clients that join and link, opened
// from a second page of the same browser; then two PeerJS clients that open a data connection:
// the PeerJS tiles move, the native ones stay), keeps the token for the tab's session, and signs out.
//
// Environment:
//   SB_ADMIN_URL    admin base URL (http://127.0.0.1:PORT)
//   SB_ADMIN_TOKEN  its bearer token
//   SB_NODE_WS      a node's WebSocket URL (ws://127.0.0.1:PORT/ws) for the change
//   SB_ARTIFACTS    where screenshots go (default tests/artifacts/browser)
// tests/integration/test_admin_dashboard.py starts Redis, a node and the admin and runs this.
// Prints `N passed, N failed, N skipped`; exit status 0 when every step passed.
import { Steps, assert, closeBrowser, openBrowser, runSteps, screenshot, waitFor } from './lib.mjs';

const steps = new Steps();
const FIGS = ['nodes', 'active_users', 'rooms', 'p2p_links', 'p2p_users', 'native_users', 'native_links',
    'peerjs_users', 'peerjs_links'];

function env(name) {
    const v = process.env[name];
    return v && v.trim() ? v.trim() : null;
}

async function meshStatus(admin) {
    const res = await fetch(`${admin.url}/admin/mesh-status`, { headers: { Authorization: `Bearer ${admin.token}` } });
    const body = await res.text();
    if (res.status !== 200) throw new Error(`mesh-status: HTTP ${res.status}: ${body.slice(0, 200)}`);
    return JSON.parse(body);
}

function apiFigures(m) {
    return {
        nodes: m.nodes.length, active_users: m.active_users, rooms: m.rooms, p2p_links: m.p2p_links, p2p_users: m.p2p_users,
        native_users: m.native.users, native_links: m.native.links, peerjs_users: m.peerjs.users, peerjs_links: m.peerjs.links,
    };
}

// The figures the page shows, as numbers (null when a tile shows no figure).
async function pageFigures(page) {
    return page.evaluate((figs) => {
        const out = {};
        for (const f of figs) {
            const t = document.getElementById(`fig-${f}`).textContent.trim();
            out[f] = /^\d+$/.test(t) ? Number(t) : null;
        }
        return out;
    }, FIGS);
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// Polls until the page shows exactly what mesh-status returns (and, if given, pred holds).
async function waitShowsApi(page, admin, what, pred = () => true, timeoutMs = 10000) {
    let last = null;
    try {
        return await waitFor(what, async () => {
            const m = await meshStatus(admin);
            const api = apiFigures(m);
            const shown = await pageFigures(page);
            last = { api, shown };
            return same(api, shown) && pred(api) ? m : null;
        }, { timeoutMs, intervalMs: 100 });
    } catch (e) {
        throw new Error(`${e.message}; last: ${JSON.stringify(last)}`);
    }
}

// Installs a tiny protocol client (docs/protocol.md) in a helper page: the browser's own
// WebSocket talks to the real node, so the change goes through the real system.
async function installClients(page, wsUrl) {
    await page.evaluate(async (url) => {
        let rid = 0;
        function open() {
            return new Promise((resolve, reject) => {
                const ws = new WebSocket(url, 'switchboard.v1');
                const c = { ws, waiting: new Map(), id: null };
                ws.onmessage = (e) => {
                    const m = JSON.parse(e.data);
                    if (m.type === 'welcome') { c.id = m.id; resolve(c); }
                    if (m.rid !== undefined && c.waiting.has(m.rid)) {
                        c.waiting.get(m.rid)(m);
                        c.waiting.delete(m.rid);
                    }
                };
                ws.onerror = () => reject(new Error('WebSocket error'));
            });
        }
        function request(c, msg) {
            const r = `r${++rid}`;
            return new Promise((resolve) => {
                c.waiting.set(r, resolve);
                c.ws.send(JSON.stringify({ ...msg, rid: r }));
            });
        }
        window.sbTest = { open, request, clients: [] };
    }, wsUrl);
}

async function main() {
    const adminUrl = env('SB_ADMIN_URL')?.replace(/\/+$/, '');
    const token = env('SB_ADMIN_TOKEN');
    const nodeWs = env('SB_NODE_WS');
    if (!adminUrl || !token || !nodeWs) {
        console.log('FAIL 00-setup: set SB_ADMIN_URL, SB_ADMIN_TOKEN and SB_NODE_WS (tests/integration/test_admin_dashboard.py does)');
        steps.failed++;
        return;
    }
    const admin = { url: adminUrl, token };
    const room = `dash-${Date.now().toString(36)}`;
    let b = null;
    try {
        b = await openBrowser('dashboard');
        const page = b.page;
        const requests = [];
        page.on('request', (r) => requests.push(r.url()));

        await steps.run('page-loads-under-csp', async () => {
            const res = await page.goto(`${adminUrl}/admin/`, { waitUntil: 'load' });
            assert(res.status() === 200, `HTTP ${res.status()}`);
            const h = res.headers();
            assert(h['content-security-policy']?.startsWith("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:"), `CSP: ${h['content-security-policy']}`);
            assert(h['cache-control'] === 'no-store', `cache-control: ${h['cache-control']}`);
            await waitFor('the login form', () => page.isVisible('#login-form'));
            assert(await page.isHidden('#dashboard'), 'figures visible before any token');
            assert(same(await pageFigures(page), Object.fromEntries(FIGS.map((f) => [f, null]))), 'figures before a token');
            // The page asks nothing of the API without a token, and loads nothing from elsewhere.
            assert(!requests.some((u) => u.includes('/admin/mesh-status')), `requests: ${requests}`);
            assert(requests.every((u) => u.startsWith(adminUrl) || u.startsWith('data:')), `requests: ${requests}`);
            assert(b.problems.length === 0, b.problems.join('; '));
        });

        await steps.run('wrong-token-error-and-no-figures', async () => {
            await page.fill('#token', `${token}x`);
            await page.click('#open');
            await waitFor('the 401 error', async () => (await page.isVisible('#error')) &&
                /401/.test(await page.textContent('#error')));
            assert(await page.isHidden('#dashboard'), 'dashboard shown with a wrong token');
            assert(await page.isVisible('#login-form'), 'login form gone');
            assert(same(await pageFigures(page), Object.fromEntries(FIGS.map((f) => [f, null]))), 'figures shown with a wrong token');
            const left = await page.evaluate(() => ({
                stored: sessionStorage.getItem('switchboard-admin-token'),
                rows: document.querySelectorAll('#nodes tbody tr').length,
                events: document.querySelectorAll('#events li').length,
                chart: document.querySelectorAll('#chart svg').length,
            }));
            assert(same(left, { stored: null, rows: 0, events: 0, chart: 0 }), `left behind: ${JSON.stringify(left)}`);
            await screenshot(b, 'dashboard-wrong-token');
        });

        let shown0 = null;
        await steps.run('right-token-shows-api-figures', async () => {
            await page.fill('#token', token);
            await page.click('#open');
            await waitFor('the dashboard', () => page.isVisible('#dashboard'));
            assert(await page.isHidden('#error'), 'error still shown');
            const m = await waitShowsApi(page, admin, 'page figures = mesh-status');
            shown0 = apiFigures(m);
            const ui = await page.evaluate(() => ({
                stored: sessionStorage.getItem('switchboard-admin-token'),
                nodes: [...document.querySelectorAll('#nodes tbody tr td:first-child')].map((td) => td.textContent),
                last: document.getElementById('last-reconcile').textContent,
            }));
            assert(ui.stored === token.trim(), 'token not kept in sessionStorage');
            const ids = m.nodes.map((n) => n.id).sort();
            assert(same(ui.nodes.sort(), ids), `nodes ${JSON.stringify(ui.nodes)} != ${JSON.stringify(ids)}`);
            assert(m.last_reconcile === null || ui.last.includes('stale links'), `last reconcile: ${ui.last}`);
            assert(b.problems.length === 0, b.problems.join('; '));
            return JSON.stringify(shown0);
        });

        let helper = null;
        await steps.run('updates-after-a-change', async () => {
            helper = await b.context.newPage();
            // A page of the node's own origin without a CSP (its /livez JSON): the clients'
            // WebSockets are then same-origin, as the demo page's are.
            await helper.goto(nodeWs.replace(/^ws/, 'http').replace(/\/ws$/, '/livez'));
            await installClients(helper, nodeWs);
            await helper.evaluate(async (r) => {
                const t = window.sbTest;
                const a = await t.open();
                const c = await t.open();
                t.clients.push(a, c);
                for (const x of [a, c]) {
                    const j = await t.request(x, { type: 'join', room: r });
                    if (j.type !== 'joined') throw new Error(JSON.stringify(j));
                }
                for (const [x, y] of [[a, c], [c, a]]) {
                    const k = await t.request(x, { type: 'link', peer: y.id, state: 'up' });
                    if (k.type !== 'link-ack') throw new Error(JSON.stringify(k));
                }
            }, room);
            const want = { active_users: shown0.active_users + 2, p2p_links: shown0.p2p_links + 1, p2p_users: shown0.p2p_users + 2 };
            await waitShowsApi(page, admin, `the page to show ${JSON.stringify(want)}`,
                (f) => f.active_users === want.active_users && f.p2p_links === want.p2p_links && f.p2p_users === want.p2p_users);
            // The chart has drawn the samples: one polyline per series, several points.
            await waitFor('chart with several samples', () => page.evaluate(() => {
                const lines = document.querySelectorAll('#chart polyline');
                return lines.length === 3 && [...lines].every((l) => l.getAttribute('points').trim().split(' ').length >= 2);
            }));
            await screenshot(b, 'dashboard');
            return JSON.stringify(want);
        });

        // PeerJS clients (issue 16) through the node's /peerjs endpoint: their tiles move, the
        // native ones stay; closed again, both shares are back.
        await steps.run('peerjs-tiles-after-a-peerjs-link', async () => {
            const base = nodeWs.replace(/\/ws$/, '/peerjs/peerjs');
            const tag = Date.now().toString(36);
            await helper.evaluate(async ({ base, tag }) => {
                const open = (id) => new Promise((resolve, reject) => {
                    const ws = new WebSocket(`${base}?key=peerjs&id=${id}&token=t${tag}`);
                    const c = { ws, id, got: [] };
                    ws.onmessage = (e) => {
                        const m = JSON.parse(e.data);
                        c.got.push(m);
                        if (m.type === 'OPEN') resolve(c);
                        if (m.type === 'ERROR' || m.type === 'ID-TAKEN') reject(new Error(e.data));
                    };
                    ws.onerror = () => reject(new Error('PeerJS WebSocket error'));
                });
                const until = async (c, type) => {
                    for (let i = 0; i < 300 && !c.got.some((m) => m.type === type); i++)
                        await new Promise((r) => setTimeout(r, 10));
                    if (!c.got.some((m) => m.type === type)) throw new Error(`no ${type} for ${c.id}`);
                };
                const a = await open(`pa${tag}`);
                const c = await open(`pb${tag}`);
                window.sbTest.pj = [a, c];
                const conn = `dc_${tag}`;
                a.ws.send(JSON.stringify({ type: 'OFFER', dst: c.id, payload: { type: 'data', connectionId: conn, sdp: { type: 'offer', sdp: 'v=0' } } }));
                await until(c, 'OFFER');
                c.ws.send(JSON.stringify({ type: 'ANSWER', dst: a.id, payload: { type: 'data', connectionId: conn, sdp: { type: 'answer', sdp: 'v=0' } } }));
                await until(a, 'ANSWER');
            }, { base, tag });
            const m0 = await meshStatus(admin);
            const want = { peerjs_users: shown0.peerjs_users + 2, peerjs_links: shown0.peerjs_links + 1,
                native_users: m0.native.users, native_links: m0.native.links };
            const m = await waitShowsApi(page, admin, `the page to show ${JSON.stringify(want)}`,
                (f) => Object.entries(want).every(([k, v]) => f[k] === v));
            assert(m.active_users === m.native.users + m.peerjs.users && m.p2p_links === m.native.links + m.peerjs.links,
                `totals are not the sum of the shares: ${JSON.stringify(apiFigures(m))}`);
            await screenshot(b, 'dashboard-peerjs');
            await helper.evaluate(() => window.sbTest.pj.forEach((c) => c.ws.close(1000)));
            await waitShowsApi(page, admin, 'PeerJS tiles back after the close',
                (f) => f.peerjs_users === shown0.peerjs_users && f.peerjs_links === shown0.peerjs_links &&
                    f.native_users === want.native_users);
            return JSON.stringify(want);
        });

        await steps.run('activity-log-after-a-close', async () => {
            await helper.evaluate(() => window.sbTest.clients[0].ws.close());
            await waitShowsApi(page, admin, 'figures back after the close',
                (f) => f.p2p_links === shown0.p2p_links && f.active_users === shown0.active_users + 1);
            await waitFor('a p2p-cleanup entry in the activity log', () => page.evaluate(() =>
                [...document.querySelectorAll('#events li .type')].some((s) => s.textContent === 'p2p-cleanup')));
            await screenshot(b, 'dashboard-after-close');
        });

        await steps.run('token-kept-for-the-session', async () => {
            await page.reload({ waitUntil: 'load' });
            await waitFor('the dashboard without asking again', () => page.isVisible('#dashboard'));
            assert(await page.isHidden('#login'), 'asked for the token again');
            await waitShowsApi(page, admin, 'figures after reload');
        });

        await steps.run('sign-out-forgets-token-and-figures', async () => {
            await page.click('#signout');
            await waitFor('the login form', () => page.isVisible('#login-form'));
            assert(await page.isHidden('#dashboard'), 'dashboard still shown');
            assert(same(await pageFigures(page), Object.fromEntries(FIGS.map((f) => [f, null]))), 'figures left after sign-out');
            const stored = await page.evaluate(() => sessionStorage.getItem('switchboard-admin-token'));
            assert(stored === null, 'token still stored');
            assert(b.problems.length === 0, b.problems.join('; '));
        });
        if (helper) await helper.evaluate(() => window.sbTest.clients.forEach((c) => c.ws.close()));
    } finally {
        if (b && steps.failed && b.console.length) console.log(`# console:\n#   ${b.console.join('\n#   ')}`);
        await closeBrowser(b);
    }
}

await runSteps(steps, main, async () => {});
