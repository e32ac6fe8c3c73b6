// End-to-end: real WebRTC between headless Chromium pages that use the demo page served by
// Switchboard nodes. Two (then three) browsers join one room through the UI, land on different
// nodes, chat over data channels in both directions, and the admin's cluster figures follow
// the links the browsers really have, including when a page closes.
//
// Environment:
//   SB_E2E_URLS     comma-separated base URLs of nodes (page i loads from URL i mod n), or one
//                   load balancer URL
//   SB_ADMIN_URL    admin base URL; with SB_ADMIN_TOKEN, checks /admin/mesh-status
//   SB_ADMIN_TOKEN
//   SB_ARTIFACTS    where screenshots go (default tests/artifacts/browser)
// `node e2e_webrtc.mjs --fake` runs against tests/browser/fake_node.mjs instead (the client and
// demo alone, no C processes). Run it inside `unshare -n` (see run-e2e.sh): Chromium then only
// has loopback to gather candidates on.
import { Steps, assert, closeBrowser, openBrowser, screenshot, waitFor } from './lib.mjs';

const steps = new Steps();
const browsers = [];
let fake = null;

function env(name) {
    const v = process.env[name];
    return v && v.trim() ? v.trim() : null;
}

async function main() {
    let urls = (env('SB_E2E_URLS') || '').split(',').map((u) => u.trim().replace(/\/+$/, '')).filter(Boolean);
    let adminUrl = env('SB_ADMIN_URL')?.replace(/\/+$/, '') || null;
    let adminToken = env('SB_ADMIN_TOKEN');
    if (process.argv.includes('--fake')) {
        const { startFakeCluster } = await import('./fake_node.mjs');
        fake = await startFakeCluster();
        urls = fake.urls;
        adminUrl = fake.adminUrl;
        adminToken = fake.adminToken;
    }
    if (urls.length === 0) {
        console.log('FAIL 00-setup: SB_E2E_URLS is not set (comma-separated node base URLs); tests/browser/run-e2e.sh starts a private cluster and sets it');
        steps.failed++;
        return;
    }
    const admin = adminUrl && adminToken ? { url: adminUrl, token: adminToken } : null;
    const room = `e2e-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
    const pageUrl = (i) => `${urls[i % urls.length]}/#${room}`;
    console.log(`# nodes ${urls.join(' ')}; admin ${admin ? admin.url : '(none)'}; room ${room}`);

    const users = [
        { name: 'alice', url: pageUrl(0) },
        { name: 'bob', url: pageUrl(1) },
        { name: 'carol', url: pageUrl(2) },
    ];

    let baseline = null;
    if (admin) {
        await steps.run('admin-baseline', async () => {
            baseline = await meshStatus(admin);
            return `before: ${figures(baseline)}`;
        });
    }

    await steps.run('static-files', async () => {
        for (const [file, type] of [['/', /text\/html/], ['/switchboard.js', /javascript/], ['/demo.js', /javascript/], ['/demo.css', /text\/css/]]) {
            const res = await fetch(urls[0] + file);
            assert(res.status === 200, `GET ${file}: ${res.status}`);
            const ct = res.headers.get('content-type') || '';
            assert(type.test(ct), `GET ${file}: content-type ${ct}`);
        }
        const csp = (await fetch(urls[0] + '/')).headers.get('content-security-policy');
        return csp ? `CSP: ${csp}` : 'no CSP header on the page';
    });

    for (const [i, u] of users.slice(0, 2).entries()) {
        await steps.run(`page-${u.name}-joins`, async () => {
            u.b = await openBrowser(u.name, u.url);
            browsers.push(u.b);
            await joinThroughUi(u);
            return `id ${u.id.slice(0, 8)} on node ${u.node} (${urls[i % urls.length]})`;
        });
    }
    const [alice, bob, carol] = users;

    if (urls.length >= 2) {
        await steps.run('pages-on-different-nodes', async () => {
            assert(alice.node && bob.node, `node ids missing: ${alice.node} / ${bob.node}`);
            assert(alice.node !== bob.node, `both pages are on node ${alice.node}`);
            return `${alice.node} and ${bob.node}`;
        });
    } else if (!steps.broken) {
        if (alice.node !== bob.node) await steps.run('pages-on-different-nodes', async () => `${alice.node} and ${bob.node}`);
        else steps.skip('pages-on-different-nodes', `one URL given and the balancer put both pages on ${alice.node}`);
    }

    await steps.run('datachannel-opens', async () => {
        await waitPeer(alice, bob, { chat: 'open', conn: 'connected' });
        await waitPeer(bob, alice, { chat: 'open', conn: 'connected' });
    });

    await steps.run('chat-alice-to-bob', async () => {
        await sendChat(alice, `hello bob, from alice ${room}`);
        await waitChat(bob, 'alice', `hello bob, from alice ${room}`);
    });

    await steps.run('chat-bob-to-alice', async () => {
        await sendChat(bob, `hi alice, bob here ${room}`);
        await waitChat(alice, 'bob', `hi alice, bob here ${room}`);
    });

    await steps.run('link-confirmed-by-server', async () => {
        await waitPeer(alice, bob, { link: 'up' });
        await waitPeer(bob, alice, { link: 'up' });
        await screenshot(alice.b, '01-alice-two-peers');
        await screenshot(bob.b, '01-bob-two-peers');
    });

    if (admin) {
        await steps.run('mesh-status-one-link', async () => {
            const s = await waitMesh(admin, baseline, { links: 1, users: 2 }, 5000);
            return figures(s);
        });
    }

    await steps.run(`page-${carol.name}-joins`, async () => {
        carol.b = await openBrowser(carol.name, carol.url);
        browsers.push(carol.b);
        await joinThroughUi(carol);
        return `id ${carol.id.slice(0, 8)} on node ${carol.node}`;
    });

    await steps.run('full-mesh', async () => {
        for (const a of [alice, bob, carol]) {
            for (const b of [alice, bob, carol]) {
                if (a !== b) await waitPeer(a, b, { chat: 'open', conn: 'connected', link: 'up' });
            }
        }
        await sendChat(carol, `carol says hi ${room}`);
        await waitChat(alice, 'carol', `carol says hi ${room}`);
        await waitChat(bob, 'carol', `carol says hi ${room}`);
        await screenshot(carol.b, '02-carol-full-mesh');
        await screenshot(alice.b, '02-alice-full-mesh');
    });

    if (admin) {
        await steps.run('mesh-status-three-links', async () => figures(await waitMesh(admin, baseline, { links: 3, users: 3 }, 5000)));
    }

    await steps.run('page-closes-peers-see-it', async () => {
        const t0 = Date.now();
        await carol.b.page.close();
        const closedAt = Date.now();
        const notes = [`page closed in ${closedAt - t0} ms`];
        if (admin) {
            const s = await waitMesh(admin, baseline, { links: 1, users: 2 }, 1000);
            notes.push(`figures down ${Date.now() - closedAt} ms after the close: ${figures(s)}`);
        }
        for (const u of [alice, bob]) {
            await waitFor(`${u.name} to see ${carol.name} gone`, () => u.b.page.evaluate(
                (id) => !document.querySelector(`#peers li[data-peer="${CSS.escape(id)}"]`), carol.id), { timeoutMs: 1000 });
            await waitChat(u, null, `${carol.name} left`);
        }
        notes.push(`peers updated ${Date.now() - closedAt} ms after the close`);
        await closeBrowser(carol.b);
        await screenshot(alice.b, '03-alice-after-carol-left');
        return notes.join('; ');
    });

    await steps.run('remaining-pair-still-chats', async () => {
        await waitPeer(alice, bob, { chat: 'open', link: 'up' });
        await sendChat(alice, `still here ${room}`);
        await waitChat(bob, 'alice', `still here ${room}`);
    });

    await steps.run('no-page-errors', async () => {
        const problems = users.filter((u) => u.b).flatMap((u) => u.b.problems.map((p) => `${u.name}: ${p}`));
        assert(problems.length === 0, problems.join('\n'));
    });
}

// ---- helpers ----

async function joinThroughUi(u) {
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
async function waitPeer(a, b, want, timeoutMs = 15000) {
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

async function sendChat(u, text) {
    await u.b.page.fill('#message', text);
    await u.b.page.click('#send');
    await waitChat(u, `${u.name} (you)`, text);
}

// Waits for a log line from `from` (null: a system line) containing `text`.
async function waitChat(u, from, text, timeoutMs = 10000) {
    await waitFor(`${u.name} to show "${text}"${from ? ` from ${from}` : ''}`, () => u.b.page.evaluate(([f, t]) =>
        [...document.querySelectorAll('#log li')].some((li) => {
            const who = li.querySelector('.from');
            return (f === null ? !who : who && who.textContent === f) && li.querySelector('.text').textContent.includes(t);
        }), [from, text]), { timeoutMs });
}

async function meshStatus(admin) {
    const res = await fetch(`${admin.url}/admin/mesh-status`, { headers: { Authorization: `Bearer ${admin.token}` } });
    const body = await res.text();
    if (res.status !== 200) throw new Error(`mesh-status: HTTP ${res.status}: ${body.slice(0, 200)}`);
    return JSON.parse(body);
}

function figures(s) {
    return `p2p_links ${s.p2p_links}, p2p_users ${s.p2p_users}, active_users ${s.active_users}`;
}

// Polls mesh-status until the figures are `want` above the baseline (other rooms may exist).
async function waitMesh(admin, baseline, want, timeoutMs) {
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

let status = 1;
try {
    await main();
} catch (e) {
    console.log(`FAIL: ${e && e.stack ? e.stack : e}`);
    steps.failed++;
} finally {
    for (const b of browsers) {
        if (b.console.length && steps.failed) console.log(`# ${b.label} console:\n#   ${b.console.join('\n#   ')}`);
        await closeBrowser(b);
    }
    if (fake) {
        // What the clients sent, to tell a client bug from a test bug.
        if (steps.failed) {
            for (const r of fake.received) {
                const d = r.msg.data;
                const what = d ? (d.description ? `description ${d.description.type}` : `candidate ${d.candidate?.candidate}`) : JSON.stringify(r.msg);
                console.log(`# fake got from ${r.from.slice(0, 6)}: ${r.msg.type}${r.msg.to ? ` to ${r.msg.to.slice(0, 6)}` : ''} ${what}`);
            }
        }
        fake.close();
    }
    status = steps.finish();
}
process.exit(status);
