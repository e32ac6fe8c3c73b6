// End to end, session resume (issue 15): two demo pages in a WebRTC data-channel call through
// the load balancer, on different nodes; the node of one page is killed with SIGKILL (its pid
// from deploy/cluster.sh's state dir). That page resumes through the balancer on another node
// with the same id; the data channel delivers every chat message in both directions, in order,
// the whole time (a message every 100 ms, none skipped because the channel was not open); the
// other page never sees the peer gone (away then back, if it saw it away); the admin counts one
// link in every sample (every 100 ms) from before the kill until the dead node's presence has
// expired and the admin has reconciled (presence TTL + reconcile interval of cluster.env, + 2 s).
// Then the other page's node is drained (SIGTERM: it closes its sockets with 1012) and that
// page resumes at once on the remaining node, with the same checks while it does.
//
// It needs nodes that offer resume: when the welcome carries no `resume` token (or
// limits.resume_grace_ms is 0) it fails at once, saying so, rather than passing vacuously.
//
// Environment (run-e2e.sh sets them; it runs this test last, since it kills a node):
//   SB_E2E_URLS       the load balancer's base URL
//   SB_ADMIN_URL, SB_ADMIN_TOKEN   the admin
//   SB_CLUSTER_DIR    deploy/cluster.sh's state dir (pids/<node id>: "pid starttime exe")
// `node e2e_resume.mjs --fake`: against fake_node.mjs (two nodes addressed directly; the "kill"
// resets the TCP connections of one fake node, and the page resumes on the same URL).
import { figures, meshStatus, openPage, spreadPages, waitMesh, waitPeer } from './demo_page.mjs';
import { Steps, assert, closeBrowser, clusterEnv, nodePid, runSteps, screenshot, waitFor } from './lib.mjs';

const steps = new Steps();
const browsers = [];
let fake = null;
const MAX_RELOADS = 3;
const SEND_EVERY_MS = 100;

function env(name) {
    const v = process.env[name];
    return v && v.trim() ? v.trim() : null;
}

// Page side: types "NAME TAG N" into the chat every `every` ms and sends it; a tick when the
// send button is disabled (no open channel) is counted as skipped.
function startChatStream([name, every, tag]) {
    window.chatSeq = 0;
    window.chatSkipped = 0;
    window.chatTimer = setInterval(() => {
        const input = document.getElementById('message');
        if (input.disabled) { window.chatSkipped++; return; }
        input.value = `${name} ${tag} ${++window.chatSeq}`;
        document.getElementById('chat-form').requestSubmit();
    }, every);
}

function stopChatStream() {
    clearInterval(window.chatTimer);
    return { sent: window.chatSeq, skipped: window.chatSkipped };
}

// The sequence numbers of `tag` messages page `u` shows from `from`, in display order.
function shownSeqs(u, from, tag) {
    return u.b.page.evaluate(([f, t]) => [...document.querySelectorAll('#log li')]
        .filter((li) => li.querySelector('.from')?.textContent === f)
        .map((li) => li.querySelector('.text').textContent.split(' '))
        .filter((w) => w.length === 3 && w[1] === t).map((w) => Number(w[2])), [from, tag]);
}

function systemLines(u) {
    return u.b.page.evaluate(() => [...document.querySelectorAll('#log li.system .text')].map((e) => e.textContent));
}

// `viewer`'s log about `name`: at most one "lost their connection", as many "is back" (null
// while one is missing), never "left".
async function sawBack(viewer, name) {
    const lines = await systemLines(viewer);
    const away = lines.filter((t) => t.startsWith(`${name} lost their connection`)).length;
    const back = lines.filter((t) => t.startsWith(`${name} is back`)).length;
    assert(!lines.some((t) => t.startsWith(`${name} left`)), `${viewer.name} saw ${name} leave: ${lines.join(' | ')}`);
    assert(away <= 1 && back <= away, `${viewer.name}'s log has ${away} away and ${back} back lines for ${name}: ${lines.join(' | ')}`);
    return away === back ? { away } : null;
}

// Both pages chat every SEND_EVERY_MS with `tag`, and the admin is sampled, until the
// returned function is called: it then checks that every message arrived in order with no
// tick skipped, and that the admin counted 1 link in every sample; returns a note.
async function streamAndSample(pages, admin, baseline, tag) {
    for (const u of pages) await u.b.page.evaluate(startChatStream, [u.name, SEND_EVERY_MS, tag]);
    const stopSampling = sampleAdmin(admin, baseline);
    return async (since) => {
        const samples = await stopSampling();
        const sent = {};
        for (const u of pages) sent[u.name] = await u.b.page.evaluate(stopChatStream);
        await new Promise((r) => setTimeout(r, 1000)); // the last messages in flight
        for (const [from, to] of [[pages[0], pages[1]], [pages[1], pages[0]]]) {
            const n = sent[from.name];
            assert(n.skipped === 0, `${from.name}'s chat had no open channel for ${n.skipped} of its ${SEND_EVERY_MS} ms ticks`);
            const got = await shownSeqs(to, from.name, tag);
            const want = Array.from({ length: n.sent }, (_, i) => i + 1);
            assert(JSON.stringify(got) === JSON.stringify(want),
                `${to.name} shows ${got.length} of ${n.sent} "${tag}" messages from ${from.name}; first difference at ${got.findIndex((v, i) => v !== i + 1)}`);
        }
        const bad = samples.filter((x) => x.links !== 1);
        assert(samples.length >= (Date.now() - since) / 500, `only ${samples.length} admin samples`);
        assert(bad.length === 0, `the admin did not count 1 link in ${bad.length} of ${samples.length} samples, e.g. ` +
            bad.slice(0, 5).map((x) => `+${x.t - since} ms: ${x.error || `${x.links} link(s)`}`).join('; '));
        return `${pages.map((u) => sent[u.name].sent).join(' + ')} messages delivered in order, none skipped; ` +
            `${samples.length} admin samples over ${Math.round((samples.at(-1).t - samples[0].t) / 1000)} s, all 1 link`;
    };
}

// Polls the admin's p2p_links every 100 ms until stop(); returns the samples {t, links|error}.
function sampleAdmin(admin, baseline) {
    const samples = [];
    let running = true;
    const loop = (async () => {
        while (running) {
            const t = Date.now();
            try {
                samples.push({ t, links: (await meshStatus(admin)).p2p_links - baseline.p2p_links });
            } catch (e) {
                samples.push({ t, error: e.message });
            }
            await new Promise((r) => setTimeout(r, 100));
        }
    })();
    return async () => { running = false; await loop; return samples; };
}

async function main() {
    let urls = (env('SB_E2E_URLS') || '').split(',').map((u) => u.trim().replace(/\/+$/, '')).filter(Boolean);
    let admin = env('SB_ADMIN_URL') && env('SB_ADMIN_TOKEN') ? { url: env('SB_ADMIN_URL').replace(/\/+$/, ''), token: env('SB_ADMIN_TOKEN') } : null;
    const clusterDir = env('SB_CLUSTER_DIR');
    let holdMs;
    if (process.argv.includes('--fake')) {
        const { startFakeCluster } = await import('./fake_node.mjs');
        fake = await startFakeCluster({ resumeGraceMs: 5000 });
        urls = fake.urls;
        admin = { url: fake.adminUrl, token: fake.adminToken };
        holdMs = 3000;
    } else {
        holdMs = Number(clusterEnv('SWITCHBOARD_PRESENCE_TTL_MS')) + Number(clusterEnv('SWITCHBOARD_ADMIN_RECONCILE_INTERVAL_MS')) + 2000;
        if (urls.length !== 1 || !admin || !clusterDir) {
            console.log('FAIL 00-setup: needs SB_E2E_URLS (one load balancer URL), SB_ADMIN_URL, SB_ADMIN_TOKEN and SB_CLUSTER_DIR; tests/browser/run-e2e.sh sets them');
            steps.failed++;
            return;
        }
    }
    const lb = urls.length === 1 ? { url: urls[0] } : null;
    const room = `resume-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
    const alice = { name: 'alice', url: `${urls[0]}/#${room}` };
    const bob = { name: 'bob', url: `${urls[1 % urls.length]}/#${room}` };
    console.log(`# ${lb ? `load balancer ${lb.url}` : `nodes ${urls.join(' ')}`}; admin ${admin.url}; room ${room}; admin sampled for ${holdMs} ms after the kill`);
    let baseline;

    await steps.run('admin-baseline', async () => {
        baseline = await meshStatus(admin);
        return figures(baseline);
    });

    await steps.run('pages-join-on-different-nodes', async () => {
        await openPage(browsers, alice);
        await openPage(browsers, bob);
        return spreadPages(lb, alice, bob, MAX_RELOADS);
    });

    await steps.run('nodes-offer-resume', async () => {
        const welcome = alice.frames.find((f) => f.type === 'welcome');
        const joined = alice.frames.find((f) => f.type === 'joined');
        const grace = welcome?.limits?.resume_grace_ms;
        assert(welcome && typeof welcome.resume === 'string' && grace > 0,
            `node ${alice.node} does not offer resume: its welcome has ${welcome && welcome.resume ? '' : 'no resume token and '}` +
            `limits.resume_grace_ms ${grace} (the server side of issue 15 is not in this build, or --resume-grace-ms is 0)`);
        assert(typeof joined?.resume === 'string' && joined.resume.length >= 16, `joined carries no resume token: ${JSON.stringify(joined)}`);
        return `grace ${grace} ms`;
    });

    await steps.run('call-up', async () => {
        await waitPeer(alice, bob, { chat: 'open', conn: 'connected', link: 'up' });
        await waitPeer(bob, alice, { chat: 'open', conn: 'connected', link: 'up' });
        return figures(await waitMesh(admin, baseline, { links: 1, users: 2 }, 5000));
    });

    let killedAt;
    let killed;
    let finish;
    await steps.run('kill-alice-node', async () => {
        finish = await streamAndSample([alice, bob], admin, baseline, 'kill');
        await new Promise((r) => setTimeout(r, 1000)); // traffic and samples before the kill
        killed = alice.node;
        if (fake) {
            fake.resetSockets(killed);
            killedAt = Date.now();
            return `reset every socket of fake node ${killed}`;
        }
        const pid = nodePid(clusterDir, killed);
        process.kill(pid, 'SIGKILL');
        killedAt = Date.now();
        return `kill -9 ${pid} (${killed}, alice's node; bob is on ${bob.node})`;
    });

    await steps.run('alice-resumes-same-id', async () => {
        await alice.b.page.waitForSelector('body[data-conn="reconnected"]', { timeout: 15000 });
        const took = Date.now() - killedAt;
        const [id, node, state] = await alice.b.page.evaluate(() => [document.body.dataset.id, document.body.dataset.node, document.body.dataset.state]);
        assert(id === alice.id, `alice's id changed: ${alice.id} -> ${id}`);
        assert(state === 'joined', `alice's page state ${state}`);
        if (!fake) assert(node !== killed, `alice is on ${node}, the node that was killed`);
        if (lb) {
            // The resume went through the balancer, like the first socket.
            const want = `${new URL(lb.url).protocol === 'https:' ? 'wss:' : 'ws:'}//${new URL(lb.url).host}/ws`;
            assert(alice.sockets.length >= 2 && alice.sockets.every((x) => x === want), `alice's WebSockets: ${alice.sockets.join(' ')}`);
        }
        const resumed = alice.frames.filter((f) => f.type === 'resumed');
        assert(resumed.length === 1 && resumed[0].id === alice.id && resumed[0].links?.includes(bob.id),
            `resumed frames: ${JSON.stringify(resumed)}`);
        const failed = alice.frames.filter((f) => f.type === 'error');
        assert(failed.length === 0, `alice got errors: ${JSON.stringify(failed)}`);
        alice.node = node;
        return `reconnected ${took} ms after the kill, on ${node} (was ${killed})`;
    });

    await steps.run('bob-never-sees-alice-gone', async () => {
        // Whether bob hears peer-away at all depends on whether the server noticed the loss
        // before the resume took the session over (after kill -9, nobody may have yet); if
        // he did, he must hear peer-back too.
        await waitPeer(bob, alice, { chat: 'open', conn: 'connected', link: 'up', away: 'false' });
        const away = await waitFor('bob to show as many "back" as "away" lines for alice', () => sawBack(bob, 'alice'));
        await screenshot(alice.b, 'resume-01-alice-reconnected');
        await screenshot(bob.b, 'resume-01-bob');
        return away.away ? 'bob saw alice away, then back' : 'bob saw no away (the resume came first)';
    });

    await steps.run('datachannel-and-admin-held-throughout', async () => {
        const rest = killedAt + holdMs - Date.now();
        if (rest > 0) await new Promise((r) => setTimeout(r, rest));
        const note = await finish(killedAt);
        assert(await sawBack(bob, 'alice'), 'bob shows alice away (or gone) at the end');
        await waitPeer(bob, alice, { chat: 'open', link: 'up', away: 'false' }, 1000);
        await screenshot(alice.b, 'resume-02-alice-after');
        return note;
    });

    await steps.run('drain-bob-node-resumes-at-once', async () => {
        const drained = bob.node;
        const fin = await streamAndSample([alice, bob], admin, baseline, 'drain');
        await new Promise((r) => setTimeout(r, 500));
        const t0 = Date.now();
        let how;
        if (fake) {
            fake.closeSockets(1012, 'resume elsewhere', drained);
            how = `fake node ${drained} closed its sockets with 1012`;
        } else {
            const pid = nodePid(clusterDir, drained);
            process.kill(pid, 'SIGTERM');
            how = `SIGTERM to ${pid} (${drained}, bob's node)`;
        }
        await bob.b.page.waitForSelector('body[data-conn="reconnected"][data-resumes="1"]', { timeout: 15000 });
        const took = Date.now() - t0;
        const [id, node] = await bob.b.page.evaluate(() => [document.body.dataset.id, document.body.dataset.node]);
        assert(id === bob.id, `bob's id changed: ${bob.id} -> ${id}`);
        if (!fake) assert(node !== drained, `bob is on ${node}, the node that drained`);
        await new Promise((r) => setTimeout(r, 2000)); // traffic after the resume
        const note = await fin(t0);
        await waitFor('alice to show as many "back" as "away" lines for bob', () => sawBack(alice, 'bob'), { timeoutMs: 5000 });
        await waitPeer(alice, bob, { chat: 'open', link: 'up', away: 'false' }, 1000);
        await screenshot(bob.b, 'resume-03-bob-after-drain');
        return `${how}; bob resumed on ${node} ${took} ms later; ${note}`;
    });

    await steps.run('no-page-errors', async () => {
        const problems = [alice, bob].flatMap((u) => u.b.problems.map((p) => `${u.name}: ${p}`));
        assert(problems.length === 0, problems.join('\n'));
    });
}

await runSteps(steps, main, async () => {
    for (const b of browsers) {
        if (b.console.length && steps.failed) console.log(`# ${b.label} console:\n#   ${b.console.join('\n#   ')}`);
        await closeBrowser(b);
    }
    if (fake) fake.close();
});
