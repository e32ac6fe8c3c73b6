// Switchboard admin dashboard: asks for the bearer token (kept in sessionStorage, sent only in
// the Authorization header to this origin), polls /admin/mesh-status every REFRESH_MS, and shows
// the figures, the nodes, the last reconcile, the totals, the activity log and a chart of the
// links and users over the last minutes. Everything from the API goes in with textContent,
// never as HTML. With a refused token (401) it forgets the token and shows no figures.
'use strict';

(() => {
    const TOKEN_KEY = 'switchboard-admin-token';
    const REFRESH_MS = 2500;
    const HISTORY_MS = 10 * 60 * 1000;
    const SVG = 'http://www.w3.org/2000/svg';
    const FIGURES = ['nodes', 'active_users', 'rooms', 'p2p_links', 'p2p_users', 'away_sockets',
        'native_users', 'native_links', 'peerjs_users', 'peerjs_links'];

    const $ = (id) => document.getElementById(id);
    let timer = null;
    let inFlight = false;
    let history = []; // {t, links, linked, users}

    function token() {
        return sessionStorage.getItem(TOKEN_KEY);
    }

    function showError(text) {
        const e = $('error');
        e.textContent = text;
        e.hidden = !text;
    }

    function clearFigures() {
        for (const f of FIGURES) $(`fig-${f}`).textContent = '–';
        for (const id of ['last-reconcile', 'totals', 'events']) $(id).replaceChildren();
        document.querySelector('#nodes tbody').replaceChildren();
        $('chart').replaceChildren();
        $('chart-span').textContent = '';
        history = [];
    }

    function signedOut(message) {
        if (timer) clearInterval(timer);
        timer = null;
        sessionStorage.removeItem(TOKEN_KEY);
        clearFigures();
        $('dashboard').hidden = true;
        $('login').hidden = false;
        $('signout').hidden = true;
        $('reconcile').hidden = true;
        $('updated').textContent = 'not connected';
        showError(message || '');
        $('token').value = '';
        $('token').focus();
    }

    async function api(path, method = 'GET') {
        const res = await fetch(path, {
            method,
            cache: 'no-store',
            credentials: 'omit',
            headers: { Authorization: `Bearer ${token()}` },
        });
        if (res.status === 401) {
            const err = new Error('unauthorized');
            err.unauthorized = true;
            throw err;
        }
        const body = await res.json().catch(() => null);
        if (!res.ok) throw new Error(body && body.error ? body.error : `HTTP ${res.status}`);
        return body;
    }

    function fmtDuration(ms) {
        if (ms === null || ms === undefined) return '?';
        const s = Math.floor(ms / 1000);
        if (s < 60) return `${s} s`;
        if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
        const h = Math.floor(s / 3600);
        return h < 48 ? `${h} h ${Math.floor((s % 3600) / 60)} min` : `${Math.floor(h / 24)} d`;
    }

    function fmtTime(iso) {
        const d = new Date(iso);
        return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString();
    }

    function pairs(dl, rows) {
        dl.replaceChildren();
        for (const [k, v] of rows) {
            const dt = document.createElement('dt');
            dt.textContent = k;
            const dd = document.createElement('dd');
            dd.textContent = v;
            dl.append(dt, dd);
        }
    }

    function describe(ev) {
        const d = ev.data || {};
        switch (ev.type) {
        case 'p2p-cleanup':
            return `${d.stale_connections} stale connection(s) removed` +
                (d.reason ? ` (${d.reason}${d.room ? `, room ${d.room}` : ''})` : '');
        case 'node-down':
            return `node ${d.node} down: ${d.stale_sockets} stale socket(s), ${d.stale_links} link(s) removed`;
        case 'node-up':
            return `node ${d.node} up`;
        case 'reconcile':
            return `pass repaired ${d.stale_sockets} socket(s), ${d.stale_links} link(s), ` +
                `${d.violations} violation(s); ${d.remaining_links} links remain`;
        default:
            return JSON.stringify(d);
        }
    }

    function renderEvents(events) {
        const ul = $('events');
        ul.replaceChildren();
        if (!events.length) {
            const li = document.createElement('li');
            li.className = 'muted';
            li.textContent = 'Nothing yet.';
            ul.append(li);
            return;
        }
        for (const ev of events) {
            const li = document.createElement('li');
            const t = document.createElement('time');
            t.dateTime = ev.at;
            t.textContent = fmtTime(ev.at);
            const type = document.createElement('span');
            type.className = `type type-${String(ev.type).replace(/[^a-z0-9-]/gi, '')}`;
            type.textContent = ev.type;
            const detail = document.createElement('span');
            detail.className = 'detail';
            detail.textContent = describe(ev);
            li.append(t, type, detail);
            ul.append(li);
        }
    }

    function renderNodes(nodes) {
        const tbody = document.querySelector('#nodes tbody');
        tbody.replaceChildren();
        for (const n of nodes) {
            const tr = document.createElement('tr');
            const cells = [n.id, String(n.sockets), fmtDuration(n.age_ms), n.draining ? 'draining' : 'serving'];
            cells.forEach((text, i) => {
                const td = document.createElement('td');
                td.textContent = text;
                if (i === 1) td.className = 'num';
                if (i === 3 && n.draining) td.className = 'draining';
                tr.append(td);
            });
            tbody.append(tr);
        }
    }

    function el(name, attrs) {
        const e = document.createElementNS(SVG, name);
        for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
        return e;
    }

    // A small line chart as inline SVG: the last HISTORY_MS of samples, one line per figure.
    function renderChart() {
        const W = 600, H = 180, L = 34, R = 8, T = 10, B = 20;
        const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img',
            'aria-label': 'P2P links, P2P users and active users over time' });
        const now = Date.now();
        const span = history.length ? Math.max(now - history[0].t, 10000) : 10000;
        const max = Math.max(1, ...history.map((h) => Math.max(h.links, h.linked, h.users)));
        const x = (t) => L + ((t - (now - span)) / span) * (W - L - R);
        const y = (v) => T + (1 - v / max) * (H - T - B);
        svg.append(el('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
        svg.append(el('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
        const top = el('text', { class: 'grid-label', x: 4, y: T + 10 });
        top.textContent = String(max);
        const zero = el('text', { class: 'grid-label', x: 4, y: H - B });
        zero.textContent = '0';
        const ago = el('text', { class: 'grid-label', x: L, y: H - 4 });
        ago.textContent = `-${fmtDuration(span)}`;
        const nowLabel = el('text', { class: 'grid-label', x: W - R - 24, y: H - 4 });
        nowLabel.textContent = 'now';
        svg.append(top, zero, ago, nowLabel);
        for (const [key, cls] of [['users', 'line-users'], ['linked', 'line-linked'], ['links', 'line-links']]) {
            const pts = history.map((h) => `${x(h.t).toFixed(1)},${y(h[key]).toFixed(1)}`).join(' ');
            svg.append(el('polyline', { class: cls, points: pts, 'data-series': key }));
        }
        $('chart').replaceChildren(svg);
        $('chart-span').textContent = `(last ${fmtDuration(span)})`;
    }

    function render(s) {
        const values = {
            nodes: s.nodes.length, active_users: s.active_users, rooms: s.rooms,
            p2p_links: s.p2p_links, p2p_users: s.p2p_users, away_sockets: s.away_sockets || 0,
        };
        // The totals split by protocol: native clients and PeerJS ones (issue 16).
        for (const p of ['native', 'peerjs']) {
            values[`${p}_users`] = s[p] ? s[p].users : 0;
            values[`${p}_links`] = s[p] ? s[p].links : 0;
        }
        for (const f of FIGURES) $(`fig-${f}`).textContent = String(values[f]);
        // A Redis Cluster shard lost: the figures cover only the slots that answered.
        const missing = s.missing_slots ? `${s.missing_slots.count} hash slots missing (first ${s.missing_slots.first})` : '';
        const unread = (s.unreadable || []).join(', ');
        $('partial').hidden = !s.partial;
        $('partial').textContent = s.partial ? `Partial figures: ${[missing, unread && `not readable: ${unread}`].filter(Boolean).join('; ')}` : '';
        const r = s.last_reconcile;
        pairs($('last-reconcile'), r ? [
            ['at', new Date(r.at).toLocaleString()],
            ['duration', `${r.duration_ms} ms`],
            ['stale sockets', r.stale_sockets],
            ['stale links', r.stale_links],
            ['remaining links', r.remaining_links],
            ['violations', r.violations],
        ] : [['at', 'no pass yet']]);
        const t = s.totals;
        const kinds = (t && t.violations_by_kind) || {};
        pairs($('totals'), !t ? [['totals', 'not readable (partial)']] : [
            ['reconcile runs', t.reconcile_runs],
            ['stale sockets removed', t.stale_sockets_removed],
            ['stale links removed', t.stale_links_removed],
            ['violations repaired', t.violations_repaired],
            ['by kind', Object.entries(kinds).map(([k, v]) => `${k} ${v}`).join(', ') || '0'],
        ]);
        renderNodes(s.nodes);
        renderEvents(s.events || []);
        const now = Date.now();
        history.push({ t: now, links: s.p2p_links, linked: s.p2p_users, users: s.active_users });
        history = history.filter((h) => now - h.t <= HISTORY_MS);
        renderChart();
        $('updated').textContent = `updated ${new Date(now).toLocaleTimeString()}`;
    }

    async function refresh() {
        if (inFlight || !token()) return;
        inFlight = true;
        try {
            const s = await api('/admin/mesh-status');
            showError('');
            $('dashboard').hidden = false;
            $('login').hidden = true;
            $('signout').hidden = false;
            $('reconcile').hidden = false;
            render(s);
        } catch (e) {
            if (e.unauthorized) signedOut('The admin refused this token (401). Enter the right token.');
            else showError(`Cannot read the figures: ${e.message}. Retrying…`);
        } finally {
            inFlight = false;
        }
    }

    function start() {
        if (timer) clearInterval(timer);
        refresh();
        timer = setInterval(refresh, REFRESH_MS);
    }

    $('login-form').addEventListener('submit', (ev) => {
        ev.preventDefault();
        const t = $('token').value.trim();
        if (!t) return;
        sessionStorage.setItem(TOKEN_KEY, t);
        $('token').value = '';
        showError('');
        start();
    });

    $('signout').addEventListener('click', () => signedOut(''));

    $('reconcile').addEventListener('click', async () => {
        const b = $('reconcile');
        b.disabled = true;
        try {
            await api('/admin/reconcile', 'POST');
            await refresh();
        } catch (e) {
            if (e.unauthorized) signedOut('The admin refused this token (401). Enter the right token.');
            else showError(`Reconcile failed: ${e.message}`);
        } finally {
            b.disabled = false;
        }
    });

    if (token()) start();
    else $('token').focus();
})();
