// End-to-end: real WebRTC between headless Chromium pages that use the demo page served by
// Switchboard nodes. Two (then three) browsers join one room through the UI, land on different
// nodes, chat over data channels in both directions, and the admin's cluster figures follow
// the links the browsers really have, including when a page closes.
//
// Two topologies:
// - One URL, a load balancer (what run-e2e.sh does: HAProxy of deploy/cluster.sh in front of
//   three nodes). Every page loads from it, and the test checks that everything went through
//   it: each page's fetches are from the balancer's origin and its WebSocket is ws://<LB>/ws;
//   with SB_LB_MONITOR_URL, HAProxy's /metrics show one current session per open page on the
//   server named like the node the page says it is on (cluster.sh names HAProxy's servers after
//   the node ids; otherwise only the spread of sessions is compared), so on more than one
//   server. Alice and bob must land on different nodes: if, and only if, the balancer really
//   put both on the same node, bob's page is reloaded (at most MAX_RELOADS times, each printed,
//   the count in the step's note) until it lands elsewhere; the step fails if it never does.
//   The node of each of the three pages is reported.
// - Several URLs, nodes directly (page i loads from URL i mod n; --fake uses two): alice and
//   bob are on different nodes by construction, checked without any reload.
//
// Environment:
//   SB_E2E_URLS       one load balancer base URL, or comma-separated node base URLs
//   SB_LB_MONITOR_URL optional, with one URL: HAProxy's monitor base URL (GET /metrics)
//   SB_ADMIN_URL      admin base URL; with SB_ADMIN_TOKEN, checks /admin/mesh-status
//   SB_ADMIN_TOKEN
//   SB_ARTIFACTS      where screenshots go (default tests/artifacts/browser)
// `node e2e_webrtc.mjs --fake` runs against tests/browser/fake_node.mjs instead (the client and
// demo alone, no C processes). Run it inside `unshare -n` (see run-e2e.sh): Chromium then only
// has loopback to gather candidates on.
import { figures, meshStatus, openPage, sendChat, spreadPages, throughLb, waitChat, waitMesh, waitPeer } from './demo_page.mjs';
import { Steps, assert, closeBrowser, runSteps, screenshot, waitFor } from './lib.mjs';

const steps = new Steps();
const browsers = [];
let fake = null;
// Reloads of bob's page allowed when the balancer put alice and bob on the same node.
const MAX_RELOADS = 3;

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
    // One URL: a load balancer. Several: nodes, addressed directly.
    const lb = urls.length === 1 ? { url: urls[0], origin: new URL(urls[0]).origin } : null;
    if (lb) {
        lb.ws = `${new URL(urls[0]).protocol === 'https:' ? 'wss:' : 'ws:'}//${new URL(urls[0]).host}/ws`;
        lb.monitor = fake ? null : env('SB_LB_MONITOR_URL')?.replace(/\/+$/, '') || null;
    }
    const room = `e2e-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
    const pageUrl = (i) => `${urls[i % urls.length]}/#${room}`;
    console.log(lb
        ? `# load balancer ${lb.url} (monitor ${lb.monitor || 'not given: its sessions are not checked'}); admin ${admin ? admin.url : '(none)'}; room ${room}`
        : `# nodes ${urls.join(' ')}; admin ${admin ? admin.url : '(none)'}; room ${room}`);

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
            await openPage(browsers, u);
            return `id ${u.id.slice(0, 8)} on node ${u.node} (${urls[i % urls.length]})`;
        });
    }
    const [alice, bob, carol] = users;

    await steps.run('pages-on-different-nodes', async () => spreadPages(lb, alice, bob, MAX_RELOADS));

    if (lb) {
        await steps.run('through-load-balancer', async () => throughLb(lb, [alice, bob]));
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
        await openPage(browsers, carol);
        const spread = new Set([alice, bob, carol].map((u) => u.node)).size;
        return `id ${carol.id.slice(0, 8)} on node ${carol.node}; pages: alice on ${alice.node}, ` +
            `bob on ${bob.node}, carol on ${carol.node} (${spread} distinct nodes)`;
    });

    if (lb) {
        await steps.run('three-pages-through-load-balancer', async () => throughLb(lb, [alice, bob, carol]));
    }

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

await runSteps(steps, main, async () => {
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
});
