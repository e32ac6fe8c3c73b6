// Shared by the browser tests: launching headless Chromium with the flags WebRTC needs on a
// loopback-only machine, a numbered step runner that prints `N passed, N failed`, polling with
// a deadline, and screenshots.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CHROMIUM = process.env.SB_CHROMIUM || '/usr/bin/chromium';

// --allow-loopback-in-peer-connection and the media permissions make Chromium gather host
// candidates on 127.0.0.1; without them no candidate is gathered on a loopback-only machine.
const CHROMIUM_ARGS = [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--allow-loopback-in-peer-connection', '--no-proxy-server',
];

// getUserMedia answered by Chromium's fake camera and microphone, without a permission prompt.
export const FAKE_MEDIA_ARGS = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'];

/**
 * One browser per page, each with a fresh profile in a temp dir (removed by close()), so the
 * pages share nothing, as two users' browsers would. Page errors and console errors are
 * collected in `problems` / `console`. `args`: more Chromium flags (e.g. FAKE_MEDIA_ARGS).
 */
export async function openBrowser(label, url, { args = [] } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-browser-'));
    const context = await chromium.launchPersistentContext(dir, {
        executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...args],
        viewport: { width: 1000, height: 700 },
    });
    const b = { label, context, dir, problems: [], console: [], page: null };
    try {
        await context.grantPermissions(['microphone', 'camera']);
        const page = context.pages()[0] || (await context.newPage());
        b.page = page;
        page.on('pageerror', (e) => b.problems.push(`page error: ${e.message}`));
        page.on('console', (m) => {
            if (m.type() !== 'error' && m.type() !== 'warning') return;
            const text = m.text();
            b.console.push(text);
            if (/Content Security Policy/i.test(text)) b.problems.push(`CSP violation: ${text}`);
        });
        if (url) await page.goto(url, { waitUntil: 'load' });
    } catch (e) {
        await closeBrowser(b);
        throw e;
    }
    return b;
}

export async function closeBrowser(b) {
    if (!b || b.closed) return;
    b.closed = true;
    try { await b.context.close(); } catch { /* already gone */ }
    fs.rmSync(b.dir, { recursive: true, force: true });
}

/** Polls fn() until it returns a truthy value, or throws after timeoutMs naming `what`. */
export async function waitFor(what, fn, { timeoutMs = 10000, intervalMs = 50 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        try {
            last = await fn();
            if (last) return last;
        } catch (e) {
            last = e;
        }
        if (Date.now() > deadline) {
            const detail = last instanceof Error ? last.message : JSON.stringify(last);
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${detail})`);
        }
        await new Promise((r) => setTimeout(r, intervalMs));
    }
}

export function assert(cond, message) {
    if (!cond) throw new Error(message);
}

/**
 * Runs numbered steps in order. A failed step fails, and the steps after it are skipped
 * (they build on it), unless it was run with `{ independent: true }` (nothing after it builds
 * on it). finish() prints `N passed, N failed, N skipped` and returns the exit status.
 */
export class Steps {
    constructor() {
        this.passed = 0;
        this.failed = 0;
        this.skipped = 0;
        this.n = 0;
        this.broken = false;
    }

    async run(name, fn, { independent = false } = {}) {
        const label = `${String(++this.n).padStart(2, '0')}-${name}`;
        if (this.broken) {
            this.skipped++;
            console.log(`SKIP ${label}`);
            return undefined;
        }
        const t0 = Date.now();
        try {
            const note = await fn();
            this.passed++;
            console.log(`PASS ${label} (${Date.now() - t0} ms)${note ? `: ${note}` : ''}`);
            return note;
        } catch (e) {
            this.failed++;
            if (!independent) this.broken = true;
            console.log(`FAIL ${label} (${Date.now() - t0} ms): ${e && e.stack ? e.stack : e}`);
            return undefined;
        }
    }

    skip(name, why) {
        this.skipped++;
        console.log(`SKIP ${String(++this.n).padStart(2, '0')}-${name}: ${why}`);
    }

    finish() {
        console.log(`${this.passed} passed, ${this.failed} failed, ${this.skipped} skipped`);
        return this.failed > 0 || this.passed === 0 ? 1 : 0;
    }
}

/**
 * Runs main(), counts an exception outside the steps as a failure, then cleanup() (always),
 * prints the summary and exits with the steps' status.
 */
export async function runSteps(steps, main, cleanup) {
    try {
        await main();
    } catch (e) {
        console.log(`FAIL: ${e && e.stack ? e.stack : e}`);
        steps.failed++;
    } finally {
        await cleanup();
    }
    process.exit(steps.finish());
}

// A KEY=value of deploy/cluster.env (the settings deploy/cluster.sh gives every service).
export function clusterEnv(key) {
    const m = new RegExp(`^${key}=(\\S+)$`, 'm').exec(fs.readFileSync(path.join(ROOT, 'deploy/cluster.env'), 'utf8'));
    if (!m) throw new Error(`deploy/cluster.env has no ${key}`);
    return m[1];
}

// The pid deploy/cluster.sh recorded for a node (its state dir's pids/<node id>: "pid
// starttime exe"), checked to be a live switchboard-node.
export function nodePid(dir, node) {
    const file = path.join(dir, 'pids', node);
    const [pid] = fs.readFileSync(file, 'utf8').trim().split(/\s+/);
    assert(/^\d+$/.test(pid), `${file}: no pid`);
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    assert(cmd.includes('switchboard-node'), `pid ${pid} of ${file} is not a node: ${cmd.replace(/\0/g, ' ')}`);
    return Number(pid);
}

export function artifactsDir() {
    const dir = process.env.SB_ARTIFACTS || path.join(ROOT, 'tests/artifacts/browser');
    fs.mkdirSync(dir, { recursive: true });
    return dir;
}

export async function screenshot(b, name) {
    const file = path.join(artifactsDir(), `${name}.png`);
    await b.page.screenshot({ path: file, fullPage: true });
    return file;
}
