// Shared pieces of the browser tests: a `volley serve` of their own on a free loopback port,
// Debian's Chromium driven by playwright-core, server-side connection drops with `ss -K`, and
// bounded waits.
//
// Environment:
//   VOLLEY_BIN        the volley binary (default: target/release/volley of this repository)
//   CHROMIUM          the browser (default /usr/bin/chromium)
//   VOLLEY_BROWSER_DEV=1  put e2e/browser/devserver.mjs (a model of the page/SSE/$metrics side)
//                     in front of volley serve: for working on the page before the server has it
//   VOLLEY_SCREENSHOTS=docs  also write the screenshots to docs/screenshots/ (else only to
//                     target/browser-tests/)

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const OUT = path.join(REPO, 'target/browser-tests');

/** The policy the page must work under: scripts and styles from the origin, nothing inline. */
export const CSP = [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
].join('; ');

export const CHROMIUM_ARGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    // A document that the tests fulfil themselves (to add the CSP) has no address space of its
    // own, and Chromium's Local Network Access checks would then refuse its loopback WebSockets.
    '--disable-features=LocalNetworkAccessChecks',
];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; throws `what` after `timeout` ms. */
export async function until(what, fn, { timeout = 10000, every = 50 } = {}) {
    const end = Date.now() + timeout;
    let last;
    for (;;) {
        try {
            last = await fn();
            if (last) return last;
        } catch (e) {
            last = e;
        }
        if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
        await sleep(every);
    }
}

/**
 * Starts `volley serve` on 127.0.0.1:0 and reads its port from the "listening on" line.
 * Returns { port, base, serverPort, stop }: `base` is the page's origin, `serverPort` the port
 * whose connections `dropConnections` kills (the dev server's in VOLLEY_BROWSER_DEV mode).
 */
export async function startServer(extraArgs = []) {
    const bin = process.env.VOLLEY_BIN || path.join(REPO, 'target/release/volley');
    if (!fs.existsSync(bin)) throw new Error(`no volley binary at ${bin}: run cargo build --release -p volley-cli`);
    const proc = spawn(bin, ['serve', '--bind', '127.0.0.1:0', ...extraArgs], {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    });
    let stderr = '';
    const port = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`volley serve did not start in 10 s:\n${stderr}`)), 10000);
        proc.stderr.on('data', (chunk) => {
            stderr += chunk;
            const m = /listening on \w+:\/\/127\.0\.0\.1:(\d+)/.exec(stderr);
            if (m) {
                clearTimeout(timer);
                resolve(Number(m[1]));
            }
        });
        proc.on('exit', (code) => {
            clearTimeout(timer);
            reject(new Error(`volley serve exited with ${code}:\n${stderr}`));
        });
    });
    proc.stderr.resume();
    let dev = null;
    if (process.env.VOLLEY_BROWSER_DEV === '1') {
        const { startDevServer } = await import('./devserver.mjs');
        dev = await startDevServer({ upstream: `127.0.0.1:${port}` });
    }
    const front = dev ? dev.port : port;
    return {
        port,
        serverPort: front,
        base: `http://127.0.0.1:${front}`,
        ws: `ws://127.0.0.1:${front}`,
        stderr: () => stderr,
        async stop() {
            if (dev) dev.close();
            proc.kill('SIGTERM');
            await Promise.race([new Promise((r) => proc.once('exit', r)), sleep(3000)]);
            if (proc.exitCode === null) proc.kill('SIGKILL');
        },
    };
}

/**
 * Kills, on the server's side, every established TCP connection to `port` except those whose
 * client port is in `keep` (`ss -K`, needs root and a kernel with INET_DIAG_DESTROY): the
 * server sees its socket aborted and the browser a reset, as when a server drops a client.
 * Returns how many connections were killed.
 */
export function dropConnections(port, keep = []) {
    const filter = [`sport = :${port}`, ...keep.map((p) => `dport != :${p}`)].join(' and ');
    const out = execFileSync('ss', ['-K', '-tnH', 'state', 'established', `( ${filter} )`], { encoding: 'utf8' });
    return out.split('\n').filter((l) => l.trim()).length;
}

/** Launches Chromium (Playwright gives it a fresh temporary --user-data-dir of its own). */
export async function launch() {
    const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
    if (!fs.existsSync(executablePath)) throw new Error(`no browser at ${executablePath}: run scripts/install-chromium`);
    return chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS, timeout: 30000 });
}

/**
 * A new context and page on the server, with the strict CSP forced onto the page's document
 * (whatever the server sends) and page errors and CSP violations recorded:
 * `page.problems()` lists them.
 */
export async function openPage(browser, server, { query = '', init, colorScheme = 'light', viewport = { width: 1280, height: 900 } } = {}) {
    const context = await browser.newContext({ viewport, colorScheme });
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
        if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    await page.addInitScript(() => {
        document.addEventListener('securitypolicyviolation', (e) => {
            (window.__csp = window.__csp || []).push(`${e.violatedDirective} ${e.blockedURI}`);
        });
    });
    if (init) await page.addInitScript(init);
    await page.route(
        (url) => url.origin === server.base && url.pathname === '/',
        async (route) => {
            const response = await route.fetch();
            await route.fulfill({ response, headers: { ...response.headers(), 'content-security-policy': CSP } });
        },
    );
    page.problems = async () => {
        const csp = await page.evaluate(() => window.__csp || []).catch(() => []);
        return [...problems, ...csp.map((c) => `CSP violation: ${c}`)];
    };
    await page.goto(`${server.base}/${query}`, { waitUntil: 'load', timeout: 15000 });
    return page;
}

/** Text of an element, '' when absent. */
export async function text(page, selector) {
    return (await page.locator(selector).textContent({ timeout: 2000 }).catch(() => '')) || '';
}

/** A plain WebSocket client of /chat in this process (the tests' publisher). */
export async function chatClient(server) {
    const ws = new WebSocket(`${server.ws}/chat`);
    const inbox = [];
    ws.on('message', (data) => inbox.push(JSON.parse(data.toString())));
    await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
    });
    await until('the chat greeting', () => inbox.find((m) => 'id' in m), { timeout: 5000 });
    return {
        ws,
        inbox,
        localPort: ws._socket.localPort,
        publish(topic, data) {
            ws.send(JSON.stringify({ topic, data }));
        },
        close() {
            ws.close();
        },
    };
}

/** Saves a screenshot under target/browser-tests/ (and docs/screenshots/ when asked). */
export async function screenshot(page, name, options = {}) {
    fs.mkdirSync(OUT, { recursive: true });
    const file = path.join(OUT, name);
    await page.screenshot({ path: file, ...options });
    if (process.env.VOLLEY_SCREENSHOTS === 'docs') {
        const dir = path.join(REPO, 'docs/screenshots');
        fs.mkdirSync(dir, { recursive: true });
        fs.copyFileSync(file, path.join(dir, name));
    }
    return file;
}

/** A name unique to this run, for rooms and topics. */
export function unique(prefix) {
    return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
}
