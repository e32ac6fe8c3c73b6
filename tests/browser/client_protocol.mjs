// The browser client (client/switchboard.js) against the scripted fake nodes of fake_node.mjs:
// behaviour that real nodes show only in rare situations (drain, reaped sessions, abuse closes,
// refused joins, duplicate and unknown messages, expiring TURN credentials), with real
// RTCPeerConnections in headless Chromium. Several clients live in one page, each its own
// "user". Run inside `unshare -n` with lo up (run-e2e.sh does), or anywhere with loopback only:
//   node tests/browser/client_protocol.mjs
import { clientHelpers, pageHarness } from './client_harness.mjs';
import { startFakeCluster } from './fake_node.mjs';
import { Steps, assert, closeBrowser, openBrowser, runSteps, waitFor } from './lib.mjs';

const steps = new Steps();
const MIN_MS = 100;
let fake;
let browser;
let page;
let ws, evalIn, events, clientId, peersOf, waitLinked, waitJoined;

async function main() {
    fake = await startFakeCluster({ nodes: ['fakeA', 'fakeB'] });
    browser = await openBrowser('protocol', `${fake.urls[0]}/`);
    page = browser.page;
    await page.evaluate(pageHarness);
    ({ ws, evalIn, events, clientId, peersOf, waitLinked, waitJoined } = clientHelpers(page, fake));

    await steps.run('join-and-link-across-nodes', async () => {
        await evalIn(([a, b]) => Promise.all([window.mk('a', a, 'r1'), window.mk('b', b, 'r1')]), [ws(0), ws(1)]);
        await waitJoined('a');
        await waitJoined('b');
        await waitLinked('a', 'b');
        const [pa, pb] = [await peersOf('a'), await peersOf('b')];
        assert(pa.length === 1 && pb.length === 1, `peers: ${JSON.stringify([pa, pb])}`);
        assert(pa[0].polite !== pb[0].polite, 'exactly one side must be polite');
        const s = fake.meshStatus();
        assert(s.p2p_links === 1 && s.p2p_users === 2, `fake figures ${JSON.stringify(s)}`);
        const ups = fake.sent('link').filter((r) => r.msg.state === 'up');
        assert(ups.length === 2, `expected one link up from each side, got ${ups.length}`);
        assert(ups.every((r) => r.msg.rid !== undefined), 'link requests carry a rid');
    });

    await steps.run('duplicate-and-unknown-messages-are-harmless', async () => {
        fake.duplicateRoomEvents = true;
        fake.extraFields = true;
        await evalIn((u) => window.mk('c', u, 'r1'), ws(0));
        await waitJoined('c');
        await waitLinked('a', 'c');
        await waitLinked('b', 'c');
        const cid = await clientId('c');
        for (const n of ['a', 'b']) {
            const joins = (await events(n, 'peer-joined')).filter((e) => e.id === cid);
            assert(joins.length === 1, `${n} saw ${joins.length} peer-joined for c`);
        }
        await evalIn(() => window.clients.c.leave());
        await waitFor('a and b to see c leave', async () => {
            const l = [...await events('a', 'peer-left'), ...await events('b', 'peer-left')].filter((e) => e.id === cid);
            return l.length === 2 && l.every((e) => e.reason === 'leave');
        });
        await new Promise((r) => setTimeout(r, 200)); // let the duplicates arrive
        for (const n of ['a', 'b']) {
            const left = (await events(n, 'peer-left')).filter((e) => e.id === cid);
            assert(left.length === 1, `${n} saw ${left.length} peer-left for c`);
            const errs = await events(n, 'error');
            assert(errs.length === 0, `${n} errors: ${JSON.stringify(errs)}`);
        }
        assert((await events('c', 'left')).length === 1, 'c got no left event');
        assert(fake.meshStatus().p2p_links === 1, `links after c left: ${fake.meshStatus().p2p_links}`);
        fake.duplicateRoomEvents = false;
        fake.extraFields = false;
    });

    await steps.run('peer-left-closes-the-connection-without-link-down', async () => {
        const downs = fake.sent('link').filter((r) => r.msg.state === 'down');
        assert(downs.length === 0, `link down sent: ${JSON.stringify(downs)}`);
        const state = await evalIn(() => window.clients.a.peerConnection('nobody'));
        assert(state === undefined, 'peerConnection of an unknown id');
    });

    await steps.run('drain-1001-reconnects-at-once-and-rejoins', async () => {
        const oldA = await clientId('a');
        fake.closeSockets(1001, 'draining', 'fakeA');
        const t0 = Date.now();
        await waitFor('a to rejoin with a new id', async () => {
            const id = await evalIn(() => window.clients.a.room && window.clients.a.id);
            return id && id !== oldA;
        }, { timeoutMs: 3000 });
        const took = Date.now() - t0;
        const d = (await events('a', 'disconnected')).at(-1);
        assert(d.code === 1001 && d.reconnectInMs === 0, `disconnected: ${JSON.stringify(d)}`);
        const left = (await events('b', 'peer-left')).filter((e) => e.id === oldA);
        assert(left.length === 1 && left[0].reason === 'disconnect', `b saw ${JSON.stringify(left)}`);
        const localLeft = (await events('a', 'peer-left')).filter((e) => e.reason === 'local');
        assert(localLeft.length >= 1, 'a did not report its peers gone on disconnect');
        await waitLinked('a', 'b');
        const s = fake.meshStatus();
        assert(s.p2p_links === 1 && s.p2p_users === 2, `fake figures ${JSON.stringify(s)}`);
        return `rejoined ${took} ms after the close`;
    });

    await steps.run('expired-4000-rejoins', async () => {
        const ids = [await clientId('a'), await clientId('b')];
        fake.closeSockets(4000, 'session expired');
        await waitFor('a and b to rejoin', async () => {
            const now = [await evalIn(() => window.clients.a.room && window.clients.a.id), await evalIn(() => window.clients.b.room && window.clients.b.id)];
            return now.every((id, i) => id && id !== ids[i]);
        }, { timeoutMs: 3000 });
        for (const n of ['a', 'b']) {
            const d = (await events(n, 'disconnected')).at(-1);
            assert(d.code === 4000 && d.reconnectInMs < MIN_MS + 1, `${n} disconnected: ${JSON.stringify(d)}`);
            assert((await events(n, 'error')).length === 0, `${n} reported an error for 4000`);
        }
        await waitLinked('a', 'b');
    });

    await steps.run('abuse-4002-reports-and-backs-off', async () => {
        const before = (await events('b', 'error')).length;
        fake.closeSockets(4002, 'rate limit abuse', 'fakeB');
        await waitFor('b to report the close', async () => (await events('b', 'error')).length > before, { timeoutMs: 2000 });
        const err = (await events('b', 'error')).at(-1);
        assert(err.error.code === 'rate-limit-abuse', `error: ${JSON.stringify(err)}`);
        const d = (await events('b', 'disconnected')).at(-1);
        assert(d.code === 4002 && d.reconnectInMs >= 4 * MIN_MS, `backoff too short: ${JSON.stringify(d)}`);
        await waitJoined('b', 5000);
        await waitLinked('a', 'b');
        return `reconnected after ${d.reconnectInMs} ms`;
    });

    await steps.run('refused-join-is-retried-with-backoff', async () => {
        fake.joinErrors = ['unauthorized', 'unavailable'];
        const joinsBefore = fake.sent('join').length;
        await evalIn((u) => window.mk('d', u, 'r2'), ws(1));
        await waitJoined('d', 5000);
        const errs = (await events('d', 'error')).map((e) => e.error.code);
        assert(JSON.stringify(errs) === '["unauthorized","unavailable"]', `errors: ${errs}`);
        const waits = (await events('d', 'disconnected')).map((e) => e.reconnectInMs);
        assert(waits.length === 2 && waits[1] >= waits[0] / 2 && waits[1] >= MIN_MS, `backoff: ${waits}`);
        assert(fake.sent('join').length - joinsBefore === 3, 'three join attempts');
        return `waited ${waits.join(', ')} ms`;
    });

    await steps.run('bad-room-rejects-and-stops', async () => {
        const msg = await evalIn(async () => {
            const { Switchboard } = await import('/switchboard.js');
            const c = new Switchboard({ url: location.origin.replace('http', 'ws') + '/ws', reconnect: { minMs: 100, maxMs: 200 } });
            window.clients.bad = c;
            try {
                await c.join('no spaces allowed');
                return 'resolved';
            } catch (e) {
                return e.code;
            }
        });
        assert(msg === 'bad-room', `join rejected with ${msg}`);
        const n = fake.sent('join').filter((r) => r.msg.room === 'no spaces allowed').length;
        await new Promise((r) => setTimeout(r, 500));
        const m = fake.sent('join').filter((r) => r.msg.room === 'no spaces allowed').length;
        assert(n === 1 && m === 1, `join attempts: ${n} then ${m}`);
        const state = await evalIn(() => window.clients.bad.state);
        assert(state === 'open', `state ${state}`);
        await evalIn(() => window.clients.bad.close());
    });

    await steps.run('turn-credentials-refreshed-before-expiry', async () => {
        fake.turnTtlMs = 3000;
        await evalIn(([u, v]) => Promise.all([window.mk('e', u, 'r3'), window.mk('f', v, 'r3')]), [ws(0), ws(1)]);
        await waitJoined('e');
        await waitJoined('f');
        await waitLinked('e', 'f');
        const eid = await clientId('e');
        const fid = await clientId('f');
        const user0 = await evalIn((p) => window.clients.e.peerConnection(p).getConfiguration().iceServers.at(-1).username, fid);
        assert(user0.endsWith(`:${eid}`), `username ${user0}`);
        await waitFor('e to refresh its ICE servers twice', () => fake.sent('ice-servers').filter((r) => r.from === eid).length >= 2, { timeoutMs: 6000 });
        const user1 = await evalIn((p) => window.clients.e.peerConnection(p).getConfiguration().iceServers.at(-1).username, fid);
        assert(Number(user1.split(':')[0]) > Number(user0.split(':')[0]), `live connection kept ${user0} (now ${user1})`);
        fake.turnTtlMs = 0;
        return `${user0.split(':')[0]} -> ${user1.split(':')[0]}`;
    });

    await steps.run('close-leaves-and-stops-reconnecting', async () => {
        const fid = await clientId('f');
        const connectsBefore = (await events('f', 'connected')).length;
        await evalIn(() => window.clients.f.close());
        await waitFor('e to see f leave', async () => (await events('e', 'peer-left')).some((e) => e.id === fid && e.reason === 'leave'));
        await new Promise((r) => setTimeout(r, 400));
        assert((await events('f', 'connected')).length === connectsBefore, 'f reconnected after close()');
        const d = (await events('f', 'disconnected')).at(-1);
        assert(d.reconnectInMs === null, `disconnected: ${JSON.stringify(d)}`);
    });
}

await runSteps(steps, main, async () => {
    if (browser && steps.failed) console.log(`# console:\n#   ${browser.console.join('\n#   ')}`);
    await closeBrowser(browser);
    if (fake) fake.close();
});
