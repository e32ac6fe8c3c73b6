// Session resume (issue 15) in the browser client (client/switchboard.js) against the fake nodes
// of fake_node.mjs, which implement the server side: a socket reset (TCP RST, no close frame)
// becomes `reconnecting`, then `reconnected` with the same id and the same RTCPeerConnection,
// whose data channel keeps delivering all along; signals queued for the away socket arrive in
// order, signals the client made while away are held and sent after `resumed`; `resume-failed`
// (unknown, grace passed) falls back to a fresh join; `retry` is honoured; the backoff has full
// jitter within its bounds; a silent socket is noticed and its session taken over; a drain
// (1012) resumes at once; no resume after 4000, close() or with `resume: false`; the sender of
// a signal to an away peer past its queue bound gets `peer-queue-full`.
// Run inside `unshare -n` with lo up (run-e2e.sh does): node tests/browser/client_resume.mjs
import { clientHelpers, pageHarness } from './client_harness.mjs';
import { startFakeCluster } from './fake_node.mjs';
import { Steps, assert, closeBrowser, openBrowser, runSteps, waitFor } from './lib.mjs';

const steps = new Steps();
const GRACE_MS = 3000;
const RESUME = { minMs: 100, maxMs: 400 };
let fake;
let browser;
let h;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Page side: sends "seq:N" every 40 ms over each named data channel, until stopped.
function streamHarness() {
    window.streams = {};
    window.startStream = (from, to) => {
        let n = 0;
        const dc = window.chans[from][to];
        window.streams[`${from}>${to}`] = setInterval(() => { if (dc.readyState === 'open') dc.send(`seq:${++n}`); }, 40);
    };
    window.stopStreams = () => { for (const t of Object.values(window.streams)) clearInterval(t); };
}

// What `name` received on its channel from peer id: every "seq:N" from 1 up, none missing,
// none closed.
async function checkStream(name, peerId, minCount) {
    const got = await h.evalIn(([n, p]) => window.msgs[n][p], [name, peerId]);
    assert(!got.includes('<closed>'), `${name}'s channel closed: ${got.slice(-5)}`);
    const seqs = got.map((m) => Number(m.split(':')[1]));
    assert(seqs.every((v, i) => v === i + 1), `${name} got a gap or disorder: ${seqs.join(',')}`);
    assert(seqs.length >= minCount, `${name} got only ${seqs.length} messages`);
    return seqs.length;
}

// Samples the fake's link count every 10 ms until stop() is called; returns the values seen.
function sampleLinks() {
    const seen = new Set();
    const t = setInterval(() => seen.add(fake.meshStatus().p2p_links), 10);
    return () => { clearInterval(t); return [...seen]; };
}

const resumesOf = (id, since = 0) => fake.sent('resume').filter((r) => r.msg.id === id && r.at >= since);

async function waitReconnected(name, count, timeoutMs = 5000) {
    return waitFor(`${name} to reconnect (${count})`, async () => {
        const r = await h.events(name, 'reconnected');
        return r.length >= count ? r.at(-1) : null;
    }, { timeoutMs });
}

async function main() {
    fake = await startFakeCluster({ nodes: ['fakeA', 'fakeB'], resumeGraceMs: GRACE_MS });
    browser = await openBrowser('resume', `${fake.urls[0]}/`);
    await browser.page.evaluate(pageHarness);
    await browser.page.evaluate(streamHarness);
    h = clientHelpers(browser.page, fake);
    const { ws, evalIn, events, clientId, waitLinked, waitJoined } = h;
    let ida;
    let idb;

    await steps.run('setup-call-across-nodes', async () => {
        await evalIn(([u, v, r]) => Promise.all([window.mk('a', u, 'rr', { resume: r }), window.mk('b', v, 'rr', { resume: r })]),
            [ws(0), ws(1), RESUME]);
        await waitJoined('a');
        await waitJoined('b');
        await waitLinked('a', 'b');
        [ida, idb] = [await clientId('a'), await clientId('b')];
        await waitFor('both data channels open', () => evalIn(([x, y]) =>
            window.chans.a[y]?.readyState === 'open' && window.chans.b[x]?.readyState === 'open', [ida, idb]));
        const w = (await evalIn(() => window.wire.a)).find((f) => f.frame.type === 'joined').frame;
        assert(typeof w.resume === 'string' && w.resume.length >= 16, `joined carries no resume token: ${JSON.stringify(w)}`);
    });

    await steps.run('reset-reconnects-same-id-connection-kept-queued-signals-in-order', async () => {
        await evalIn(([x, y]) => {
            window.pcA = window.clients.a.peerConnection(y);
            window.startStream('a', y);
            window.startStream('b', x);
        }, [ida, idb]);
        await sleep(300);
        const links = sampleLinks();
        // The first resume is told to retry in 700 ms: a stays away that long, and b's ICE
        // restart (an offer and candidates) is queued for it meanwhile.
        fake.resumeFailures = [{ reason: 'retry', retry_ms: 700 }];
        const t0 = Date.now();
        fake.resetSockets(null, ida);
        assert(fake.session(ida).away, 'the fake did not keep a away');
        await evalIn((x) => window.clients.b.peerConnection(x).restartIce(), ida);
        const rec = await waitReconnected('a', 1);
        const tookMs = Date.now() - t0;
        await sleep(500); // the stream goes on after the resume
        await evalIn(() => window.stopStreams());
        await sleep(200);
        const seenLinks = links();

        const ev = (await events('a')).map((e) => e.type).filter((t) => ['disconnected', 'reconnecting', 'reconnected', 'connected', 'joined', 'peer-left', 'resume-failed'].includes(t));
        assert(JSON.stringify(ev) === JSON.stringify(['connected', 'joined', 'disconnected', 'reconnecting', 'reconnected']),
            `a's events: ${ev.join(', ')}`);
        assert(rec.id === ida && (await clientId('a')) === ida, `a's id changed: ${rec.id} / ${await clientId('a')}`);
        assert(rec.links.includes(idb), `resumed links: ${JSON.stringify(rec.links)}`);
        assert(await evalIn((y) => window.clients.a.peerConnection(y) === window.pcA, idb), 'a got a new RTCPeerConnection');
        assert(await evalIn(() => window.clients.a.state) === 'open', 'state after resume');
        const bEv = (await events('b')).filter((e) => e.id === ida && ['peer-away', 'peer-back', 'peer-left'].includes(e.type)).map((e) => e.type);
        assert(bEv.join() === 'peer-away,peer-back', `b's events about a: ${bEv.join(', ')}`);

        // retry honoured: the same token again, after retry_ms.
        const tries = resumesOf(ida, t0);
        assert(tries.length === 2, `resume attempts: ${tries.length}`);
        assert(tries[1].at - tries[0].at >= 690, `retried after ${tries[1].at - tries[0].at} ms, not 700`);
        assert(tries[0].msg.resume === tries[1].msg.resume && tries[0].msg.room === 'rr', 'retry with another token or room');

        // The signals b sent while a was away reach a right after `resumed`, in the order sent.
        const queued = fake.received.filter((r) => r.from === idb && r.msg.type === 'signal' && r.msg.to === ida && r.at >= t0 && r.at <= tries[1].at)
            .map((r) => JSON.stringify(r.msg.data));
        assert(queued.length >= 2, `b sent only ${queued.length} signals while a was away`);
        const wire = await evalIn(() => window.wire.a);
        const at = wire.findIndex((f) => f.frame.type === 'resumed');
        const after = wire.slice(at + 1, at + 1 + queued.length).map((f) => (f.frame.type === 'signal' && f.frame.from === idb ? JSON.stringify(f.frame.data) : f.frame.type));
        assert(JSON.stringify(after) === JSON.stringify(queued), `after resumed a got ${after.length} frames that differ from the ${queued.length} queued`);
        // ... and a applied them: it answered b's restart offer.
        await waitFor('a to answer b\'s ICE restart', () => fake.received.some((r) => r.from === ida && r.msg.type === 'signal' && r.msg.data?.description?.type === 'answer' && r.at > tries[1].at));

        const na = await checkStream('a', idb, 15);
        const nb = await checkStream('b', ida, 15);
        assert(seenLinks.length === 1 && seenLinks[0] === 1, `the fake's link count was ${seenLinks.join(', ')}`);
        return `resumed in ${tookMs} ms (after a retry of 700 ms); ${queued.length} queued signals in order; ` +
            `data channel delivered ${na} and ${nb} messages without a gap; links always 1`;
    });

    await steps.run('held-outgoing-signals-sent-after-resume', async () => {
        fake.resumeFailures = [{ reason: 'retry', retry_ms: 600 }];
        const t0 = Date.now();
        fake.resetSockets(null, ida);
        // a restarts ICE while away: its offer and candidates are held.
        await evalIn((y) => window.clients.a.peerConnection(y).restartIce(), idb);
        await waitReconnected('a', 2);
        const tries = resumesOf(ida, t0);
        const resumedAt = tries.at(-1).at;
        const early = fake.received.filter((r) => r.from === ida && r.msg.type === 'signal' && r.at >= t0 && r.at < resumedAt);
        assert(early.length === 0, `a sent ${early.length} signals before it resumed`);
        await waitFor('a\'s held offer to reach b', () => fake.received.some((r) => r.from === ida && r.msg.type === 'signal' && r.msg.data?.description?.type === 'offer' && r.at >= resumedAt));
        await waitFor('b to answer it', () => fake.received.some((r) => r.from === idb && r.msg.type === 'signal' && r.msg.data?.description?.type === 'answer' && r.at >= resumedAt));
        const sentAfter = fake.received.filter((r) => r.from === ida && r.msg.type === 'signal' && r.at >= resumedAt);
        assert(sentAfter[0].msg.data.description?.type === 'offer', `first signal after resume: ${JSON.stringify(sentAfter[0].msg.data).slice(0, 80)}`);
        await waitLinked('a', 'b');
        assert(await evalIn((y) => window.clients.a.peerConnection(y) === window.pcA, idb), 'a got a new RTCPeerConnection');
        return `${sentAfter.length} signals sent after the resume`;
    });

    await steps.run('backoff-full-jitter-within-bounds', async () => {
        const unit = await evalIn(async () => {
            const { fullJitterDelay } = await import('/switchboard.js');
            const o = { minMs: 100, maxMs: 1000 };
            const xs = Array.from({ length: 2000 }, () => fullJitterDelay(2, o));
            return {
                lo: [0, 3, 10].map((k) => fullJitterDelay(k, o, () => 0)),
                hi: [0, 3, 10].map((k) => fullJitterDelay(k, o, () => 0.99999)),
                min: Math.min(...xs), max: Math.max(...xs), distinct: new Set(xs).size,
            };
        });
        assert(unit.lo.join() === '0,0,0' && unit.hi.join() === '99,799,999', `bounds: ${JSON.stringify(unit)}`);
        assert(unit.min >= 0 && unit.min < 40 && unit.max < 400 && unit.max > 360 && unit.distinct > 100, `spread: ${JSON.stringify(unit)}`);
        // Live: four attempts find no node (HTTP 503), the fifth resumes.
        const before = (await events('a', 'disconnected')).length;
        fake.refuseUpgrades = 4;
        fake.resetSockets(null, ida);
        await waitReconnected('a', 3);
        const d = (await events('a', 'disconnected')).slice(before);
        assert(d.length === 5 && d.every((e) => e.resuming), `disconnected: ${JSON.stringify(d)}`);
        const waits = d.map((e) => e.reconnectInMs);
        waits.forEach((w, k) => assert(w >= 0 && w <= Math.min(RESUME.maxMs, RESUME.minMs * 2 ** k), `attempt ${k} waited ${w} ms`));
        assert(new Set(waits).size > 1, `no jitter: ${waits}`);
        assert((await clientId('a')) === ida, 'a has another id');
        assert((await events('a', 'reconnecting')).length === 3, 'one reconnecting per loss, not per attempt');
        return `waits ${waits.join(', ')} ms (caps 100, 200, 400, 400, 400)`;
    });

    await steps.run('silent-socket-noticed-and-taken-over', async () => {
        // With a token function: the resume carries a JWT as a join does. The function takes
        // longer than the ping interval, and still `resume` must be the socket's first message.
        await evalIn((u) => window.mk('c', u, 'rr', {
            pingIntervalMs: 300, pingTimeoutMs: 300, resume: { minMs: 100, maxMs: 400 },
            token: async ({ room }) => { await new Promise((r) => setTimeout(r, 600)); return `jwt-for-${room}`; },
        }), ws(1));
        await waitJoined('c');
        await waitLinked('a', 'c');
        await waitLinked('b', 'c');
        const idc = await clientId('c');
        const t0 = Date.now();
        fake.silence(idc);
        const rec = await waitReconnected('c', 1, 4000);
        const r = fake.resumed.at(-1);
        assert(r.id === idc && r.tookOver, `fake resumes: ${JSON.stringify(fake.resumed)}`);
        assert(rec.id === idc, 'c has another id');
        const last = resumesOf(idc, t0).at(-1);
        assert(last.msg.token === 'jwt-for-rr' && last.msg.room === 'rr', `c's resume: ${JSON.stringify(last.msg)}`);
        const first = fake.received.find((r) => r.from === last.from);
        assert(first === last, `the first message of c's new socket was ${JSON.stringify(first.msg)}`);
        const d = (await events('c', 'disconnected')).at(-1);
        assert(d.code === 1006 && /ping/.test(d.reason), `disconnected: ${JSON.stringify(d)}`);
        for (const n of ['a', 'b']) {
            assert(!(await events(n, 'peer-left')).some((e) => e.id === idc), `${n} saw c leave`);
        }
        await waitLinked('a', 'c');
        return `noticed and resumed ${Date.now() - t0} ms after going silent`;
    });

    await steps.run('drain-1012-resumes-at-once', async () => {
        const n = (await events('a', 'reconnected')).length;
        fake.closeSockets(1012, 'resume elsewhere', 'fakeA');
        await waitReconnected('a', n + 1, 3000);
        const d = (await events('a', 'disconnected')).at(-1);
        assert(d.code === 1012 && d.reconnectInMs === 0 && d.resuming, `disconnected: ${JSON.stringify(d)}`);
        assert((await clientId('a')) === ida, 'a has another id');
        assert(!(await events('b', 'peer-left')).some((e) => e.id === ida), 'b saw a leave');
    });

    await steps.run('resumed-tells-away-peers-and-ice-servers', async () => {
        // a and b both lost; b's resume waits 1.5 s, so a resumes while b is away (a, away
        // itself, never heard b's peer-away) and learns it from `resumed`.
        fake.turnTtlMs = 60000;
        fake.resumeFailures = [{ id: idb, reason: 'retry', retry_ms: 1500 }];
        const n = (await events('a', 'reconnected')).length;
        fake.resetSockets(null, ida);
        fake.resetSockets(null, idb);
        await waitReconnected('a', n + 1);
        await waitFor('b to resume', async () => (await events('b', 'reconnected')).length >= 1 && (await events('a', 'peer-back')).some((e) => e.id === idb), { timeoutMs: 5000 });
        const log = await events('a');
        const since = log.findLastIndex((e) => e.type === 'reconnecting');
        const seq = log.slice(since).filter((e) => (e.type === 'peer-away' || e.type === 'peer-back') && e.id === idb).map((e) => e.type);
        assert(seq.join() === 'peer-away,peer-back', `a's events about b since its loss: ${seq}`);
        const user = await evalIn((y) => window.clients.a.peerConnection(y).getConfiguration().iceServers.at(-1)?.username, idb);
        assert(user && user.endsWith(`:${ida}`), `a's connection has ICE servers ${user} after the resume`);
        fake.turnTtlMs = 0;
        await waitLinked('a', 'b');
        return `TURN user ${user.split(':')[0]}:…`;
    });

    await steps.run('resume-failed-unknown-joins-anew-on-the-same-socket', async () => {
        fake.resumeFailures = [{ reason: 'unknown' }];
        const up0 = fake.upgrades;
        const t0 = Date.now();
        fake.resetSockets(null, ida);
        const f = await waitFor('a to report resume-failed', async () => (await events('a', 'resume-failed')).at(-1));
        assert(f.reason === 'unknown', `resume-failed: ${JSON.stringify(f)}`);
        const newA = await waitJoined('a');
        assert(newA !== ida, 'a kept its id');
        assert(fake.upgrades - up0 === 1, `a opened ${fake.upgrades - up0} sockets; the welcomed one should be used to join`);
        const conn = (await events('a', 'connected')).at(-1);
        assert(conn.id === newA, `connected ${conn.id}, joined ${newA}`);
        const lost = (await events('a', 'peer-left')).filter((e) => e.id === idb);
        assert(lost.length === 1 && lost[0].reason === 'local', `a's peer-left for b: ${JSON.stringify(lost)}`);
        await waitLinked('a', 'b');
        // The old session ends when its grace does: b sees it leave once.
        await waitFor('b to see the old a leave', async () => (await events('b', 'peer-left')).some((e) => e.id === ida), { timeoutMs: GRACE_MS + 2000 });
        await sleep(200);
        const left = (await events('b', 'peer-left')).filter((e) => e.id === ida);
        assert(left.length === 1 && left[0].reason === 'disconnect', `b: ${JSON.stringify(left)}`);
        const took = Date.now() - t0;
        ida = newA;
        return `new id ${newA.slice(0, 6)}; old session ended after ${took} ms`;
    });

    await steps.run('grace-passes-resume-failed-then-fresh-join', async () => {
        // Every resume is told to retry in 10 s: longer than the grace.
        fake.resumeFailures = [{ reason: 'retry', retry_ms: 10000 }];
        fake.resetSockets(null, ida);
        const f = await waitFor('a to give up', async () => (await events('a', 'resume-failed')).at(-1)?.reason === 'grace' && (await events('a', 'resume-failed')).at(-1), { timeoutMs: GRACE_MS + 3000 });
        const r = (await events('a', 'reconnecting')).at(-1);
        const after = f.at - r.at;
        assert(after >= GRACE_MS - 50 && after < GRACE_MS + 1000, `gave up ${after} ms after the loss (grace ${GRACE_MS})`);
        const newA = await waitJoined('a', 5000);
        assert(newA !== ida, 'a kept its id');
        await waitLinked('a', 'b');
        ida = newA;
        return `gave up ${Math.round(after)} ms after the loss`;
    });

    // When a's queue held 1 signal, in the page's clock (events' `at` is performance.now()).
    let queueFullFrom = Infinity, queueFullTo = -Infinity;
    await steps.run('sender-gets-peer-queue-full', async () => {
        queueFullFrom = await evalIn(() => performance.now());
        fake.queueMax = 1;
        fake.resumeFailures = [{ reason: 'retry', retry_ms: 1000 }];
        const errs0 = (await events('b', 'error')).length;
        const t0 = Date.now();
        fake.resetSockets(null, ida);
        await evalIn((x) => window.clients.b.peerConnection(x).restartIce(), ida);
        const n = (await events('a', 'reconnected')).length;
        await waitReconnected('a', n + 1);
        fake.queueMax = 64;
        queueFullTo = await evalIn(() => performance.now());
        const errs = (await events('b', 'error')).slice(errs0).map((e) => e.error.code);
        assert(errs.length >= 1 && errs.every((c) => c === 'peer-queue-full'), `b's errors: ${errs}`);
        // The one queued before the bound is not lost: the first frame after resumed.
        const first = fake.received.find((r) => r.from === idb && r.msg.type === 'signal' && r.msg.to === ida && r.at >= t0);
        const wire = await evalIn(() => window.wire.a);
        const at = wire.findLastIndex((f) => f.frame.type === 'resumed');
        assert(wire[at + 1]?.frame.type === 'signal' && JSON.stringify(wire[at + 1].frame.data) === JSON.stringify(first.msg.data),
            `first frame after resumed: ${JSON.stringify(wire[at + 1]?.frame).slice(0, 100)}`);
        return `${errs.length} refused`;
    });

    await steps.run('no-resume-after-4000', async () => {
        const t0 = Date.now();
        fake.closeSockets(4000, 'session expired', 'fakeA');
        await waitFor('a to rejoin with a new id', async () => {
            const id = await evalIn(() => window.clients.a.room && window.clients.a.id);
            return id && id !== ida;
        }, { timeoutMs: 3000 });
        assert(resumesOf(ida, t0).length === 0, 'a tried to resume after 4000');
        ida = await clientId('a');
    });

    await steps.run('resume-false-rejoins', async () => {
        await evalIn((u) => window.mk('d', u, 'rr', { resume: false }), ws(0));
        const idd = await waitJoined('d');
        const t0 = Date.now();
        fake.resetSockets(null, idd);
        await waitFor('d to rejoin with a new id', async () => {
            const id = await evalIn(() => window.clients.d.room && window.clients.d.id);
            return id && id !== idd;
        }, { timeoutMs: 3000 });
        assert(fake.sent('resume').filter((r) => r.at >= t0).length === 0, 'd sent resume');
        await evalIn(() => window.clients.d.close());
    });

    await steps.run('no-resume-after-close', async () => {
        const up0 = fake.upgrades;
        const t0 = Date.now();
        await evalIn(() => window.clients.a.close());
        await waitFor('b to see a leave', async () => (await events('b', 'peer-left')).some((e) => e.id === ida && e.reason === 'leave'));
        await sleep(600);
        assert(fake.upgrades === up0, 'a opened a socket after close()');
        assert(fake.sent('resume').filter((r) => r.at >= t0).length === 0, 'a sent resume after close()');
        const d = (await events('a', 'disconnected')).at(-1);
        assert(d.reconnectInMs === null, `disconnected: ${JSON.stringify(d)}`);
    });

    await steps.run('no-errors', async () => {
        const errs = [];
        // c may signal a (their link's ICE) while a's queue is bounded at 1 by the step above:
        // its peer-queue-full then is the same answer b is tested for, not an error of its own.
        const own = (n, e) => !(n === 'c' && e.error.code === 'peer-queue-full' &&
                                e.at >= queueFullFrom && e.at <= queueFullTo + 1000);
        for (const n of ['a', 'c']) errs.push(...(await events(n, 'error')).filter((e) => own(n, e)).map((e) => `${n}: ${e.error.code} ${e.error.message}`));
        assert(errs.length === 0, errs.join('\n'));
        assert(browser.problems.length === 0, browser.problems.join('\n'));
    });
}

await runSteps(steps, main, async () => {
    if (browser && steps.failed) console.log(`# console:\n#   ${browser.console.join('\n#   ')}`);
    await closeBrowser(browser);
    if (fake) fake.close();
});
