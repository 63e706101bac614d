// The processes a browser journey talks to, all on 127.0.0.1 and free ports: `bulwark serve`
// with its own data directory and configuration, nginx with deploy/nginx/bulwark-odoo.conf
// in front of a tiny stand-in for the protected application, the `bulwark` CLI to set up
// users quickly, and `sqlite3` for the one thing a browser test cannot wait for (time
// passing, see `agePasswordCheck`). Every process is stopped by `stop()`, by the exit
// handler below if a test dies first, and in any case by `timeout` after MAX_LIFE_SECS.

import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
/** Where the suite writes what it leaves behind: screenshots, server logs of a failed run. */
export const OUT_DIR = path.join(REPO, 'target', 'browser');
/**
 * The binary `cargo build -p bulwark-server` makes; BULWARK_BIN overrides it (a relative
 * path counts from where the tests were started, not from the servers' directories).
 */
export const BULWARK_BIN = path.resolve(process.env.BULWARK_BIN || path.join(REPO, 'target', 'debug', 'bulwark'));
/** Every wait on a process or a mail ends after this long. */
export const DEADLINE_MS = 20_000;
/** Servers stop by themselves after this long, even if this process is killed outright. */
const MAX_LIFE_SECS = 900;

const children = new Set();
process.on('exit', () => {
    for (const child of children) killGroup(child, 'SIGKILL');
});

/** `timeout` leads its own process group: signalling the group reaches the server too. */
function killGroup(child, signal) {
    try {
        process.kill(-child.pid, signal);
    } catch {
        // Already gone.
    }
}
for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => process.exit(130));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A port nothing listens on right now. */
export function freePort() {
    return new Promise((resolve, reject) => {
        const server = net.createServer();
        server.unref();
        server.on('error', reject);
        server.listen(0, '127.0.0.1', () => {
            const { port } = server.address();
            server.close(() => resolve(port));
        });
    });
}

async function waitListening(port, child, what, logFile) {
    const started = Date.now();
    for (;;) {
        if (child.exitCode !== null || child.signalCode !== null) {
            throw new Error(`${what} exited before listening on ${port}:\n${await readText(logFile)}`);
        }
        const ok = await new Promise((resolve) => {
            const socket = net.connect(port, '127.0.0.1', () => {
                socket.end();
                resolve(true);
            });
            socket.on('error', () => resolve(false));
        });
        if (ok) return;
        if (Date.now() - started > DEADLINE_MS) {
            throw new Error(`${what} did not listen on ${port} within ${DEADLINE_MS} ms:\n${await readText(logFile)}`);
        }
        await sleep(50);
    }
}

async function readText(file) {
    try {
        return await readFile(file, 'utf8');
    } catch {
        return '';
    }
}

/** Starts a long-running process under `timeout`, tracked so that it dies with this one. */
function startProcess(program, args, { cwd, stdout = 'ignore', stderrFile }) {
    const child = spawn('timeout', ['--kill-after=5', String(MAX_LIFE_SECS), program, ...args], {
        cwd,
        env: cleanEnv(),
        stdio: ['ignore', stdout, 'pipe'],
    });
    children.add(child);
    child.on('exit', () => children.delete(child));
    // stderr goes to a log file, written as it comes (for the error messages above).
    const chunks = [];
    child.stderr.on('data', (chunk) => {
        chunks.push(chunk);
        writeFile(stderrFile, Buffer.concat(chunks)).catch(() => {});
    });
    return child;
}

async function stopProcess(child) {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    killGroup(child, 'SIGTERM');
    const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
}

/** The caller's environment without any `BULWARK_*` setting that would change the server. */
function cleanEnv() {
    const env = { ...process.env };
    for (const name of Object.keys(env)) {
        if (name.startsWith('BULWARK_')) delete env[name];
    }
    env.NO_COLOR = '1';
    return env;
}

/** Runs a short command to its end; rejects unless it exits 0. Resolves to its stdout. */
function run(program, args, { cwd, stdin }) {
    return new Promise((resolve, reject) => {
        const child = spawn(program, args, { cwd, env: cleanEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (d) => { out += d; });
        child.stderr.on('data', (d) => { err += d; });
        const timer = setTimeout(() => child.kill('SIGKILL'), DEADLINE_MS);
        child.on('error', reject);
        child.on('close', (code) => {
            clearTimeout(timer);
            if (code === 0) resolve(out);
            else reject(new Error(`${path.basename(program)} ${args.join(' ')} exited ${code}:\n${out}\n${err}`));
        });
        // A command that never reads its input may exit before it is written: that EPIPE is
        // not a failure, the exit code is what counts.
        child.stdin.on('error', (e) => { if (e.code !== 'EPIPE') reject(e); });
        child.stdin.end(stdin ?? '');
    });
}

const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');

// ---------------------------------------------------------------------------------------
// The protected application

/**
 * A stand-in for Odoo: every page says which user the gateway let through, from the
 * identity headers nginx adds.
 */
export async function startUpstream() {
    const server = http.createServer((req, res) => {
        const who = req.headers['remote-user'] || '(nobody)';
        const rows = ['remote-user', 'remote-groups', 'remote-email', 'remote-name']
            .map((h) => `<tr><th scope="row">${h}</th><td>${escapeHtml(req.headers[h] || '')}</td></tr>`)
            .join('');
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Protected app</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>Protected app</h1><p id="who">Signed in as ${escapeHtml(who)}</p>
<p>Path: <code>${escapeHtml(req.url)}</code></p><table>${rows}</table></main></body></html>`);
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    return {
        port: server.address().port,
        stop: () => new Promise((resolve) => {
            server.closeAllConnections?.();
            server.close(() => resolve());
        }),
    };
}

function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// ---------------------------------------------------------------------------------------
// nginx

function nginxBinary() {
    for (const dir of [...(process.env.PATH || '').split(':'), '/usr/sbin']) {
        const candidate = path.join(dir, 'nginx');
        if (dir && existsSync(candidate)) return candidate;
    }
    throw new Error('nginx is not installed (looked in PATH and /usr/sbin); scripts/test installs it');
}

/** nginx on `port` with the shipped Odoo site file, in front of `upstreamPort`. */
export async function startNginx({ dir, port, bulwarkPort, upstreamPort }) {
    const template = await readFile(path.join(REPO, 'deploy/nginx/bulwark-odoo.conf'), 'utf8');
    const upstream = `127.0.0.1:${upstreamPort}`;
    const values = {
        __LISTEN__: `127.0.0.1:${port}`,
        __SERVER_NAME__: '127.0.0.1',
        __BULWARK__: `127.0.0.1:${bulwarkPort}`,
        __ODOO_WS__: upstream,
        __ODOO__: upstream,
    };
    let site = template;
    for (const [name, value] of Object.entries(values)) {
        if (!site.includes(name)) throw new Error(`the nginx site file has no ${name}`);
        site = site.replaceAll(name, value);
    }
    if (site.includes('__')) throw new Error(`a placeholder of the nginx site file was left unfilled`);
    const conf = path.join(dir, 'nginx.conf');
    await writeFile(conf, `events {
    worker_connections 64;
}

http {
    access_log off;
    client_body_temp_path ${dir}/client_body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;

${site}
}
`);
    const log = path.join(dir, 'nginx.log');
    // One process (no master), so that stopping it stops nginx entirely.
    const child = startProcess(nginxBinary(), [
        '-p', dir, '-c', conf, '-e', log,
        '-g', `daemon off; master_process off; pid ${dir}/nginx.pid;`,
    ], { cwd: dir, stderrFile: path.join(dir, 'nginx.stderr') });
    await waitListening(port, child, 'nginx', log);
    return { port, origin: `http://127.0.0.1:${port}`, stop: () => stopProcess(child) };
}

// ---------------------------------------------------------------------------------------
// Bulwark

/**
 * The configuration of the browser tests: plain HTTP on loopback (so no Secure cookies),
 * two-factor required at the first login (no grace period), lockout limits small enough to
 * reach in a few seconds, and the gateway protecting the nginx origin with two factors.
 */
function configText({ dataDir, port, gatewayOrigin }) {
    return `data_dir = "${dataDir}"

[server]
listen = "127.0.0.1:${port}"
public_url = "http://127.0.0.1:${port}"
secure_cookies = false
trusted_proxies = ["127.0.0.1"]

[two_factor]
grace_days = 0

# 3 free failures, then 1 s to wait, then locked at the 5th.
[lockout.account]
free_attempts = 3
max_delay_secs = 1
lock_after = 5

# Every browser of the suite comes from 127.0.0.1: the per-address counter must not be the
# one the lockout journey hits.
[lockout.ip]
free_attempts = 1000
lock_after = 10000

[gateway]
protected = ["${gatewayOrigin}"]
default_policy = "deny"
cache_seconds = 0

[[gateway.rules]]
hosts = ["127.0.0.1"]
policy = "two_factor"
`;
}

export class Bulwark {
    /** Starts `bulwark serve` in a new temporary directory; resolves once it printed its banner. */
    static async start({ name, gatewayOrigin }) {
        if (!existsSync(BULWARK_BIN)) {
            throw new Error(`${BULWARK_BIN} does not exist: run \`cargo build -p bulwark-server\` first`);
        }
        await mkdir(os.tmpdir(), { recursive: true });
        const dir = await mkdtemp(path.join(os.tmpdir(), `bulwark-browser-${name}-`));
        const port = await freePort();
        const b = new Bulwark(dir, port);
        await writeFile(b.config, configText({ dataDir: b.dataDir, port, gatewayOrigin }));
        const child = startProcess(BULWARK_BIN, ['--config', b.config, 'serve'], {
            cwd: dir,
            stdout: 'pipe',
            stderrFile: b.logFile,
        });
        b.child = child;
        b.setupLink = await readBanner(child, b.logFile);
        await waitListening(port, child, 'bulwark serve', b.logFile);
        return b;
    }

    constructor(dir, port) {
        this.dir = dir;
        this.port = port;
        this.base = `http://127.0.0.1:${port}`;
        this.config = path.join(dir, 'bulwark.toml');
        this.dataDir = path.join(dir, 'data');
        this.outbox = path.join(this.dataDir, 'outbox');
        this.logFile = path.join(dir, 'bulwark.log');
    }

    /** Runs `bulwark --config … ARGS`; rejects unless it exits 0. Resolves to its stdout. */
    async cli(args, { stdin } = {}) {
        return stripAnsi(await run(BULWARK_BIN, ['--config', this.config, ...args], { cwd: this.dir, stdin }));
    }

    /** Creates a user with a password (the CLI's `user add`). */
    async addUser(login, password, { groups = ['internal'], name } = {}) {
        const args = ['user', 'add', login, '--email', `${login}@example.com`, '--password-stdin'];
        if (name) args.push('--name', name);
        for (const g of groups) args.push('--group', g);
        await this.cli(args, { stdin: `${password}\n` });
    }

    /**
     * Makes the password check of `login`'s newest session `secs` older, as if that much
     * time had passed since they typed their password. The server keeps its own clock, which
     * a test must not move (and a real browser test cannot wait 10 minutes); this moves the
     * one recorded time instead and leaves every decision to the server. It edits the
     * SQLite database of this test server only.
     */
    async agePasswordCheck(login, secs) {
        const db = path.join(this.dataDir, 'bulwark.db');
        const quoted = `'${String(login).replaceAll("'", "''")}'`;
        const sql = `UPDATE sessions
            SET password_checked_at = coalesce(password_checked_at, created_at) - ${Number(secs)}
            WHERE id = (SELECT max(id) FROM sessions
                        WHERE user_id = (SELECT id FROM users WHERE login = ${quoted}));
            SELECT changes();`;
        const changed = await run('sqlite3', ['-cmd', '.timeout 5000', db, sql], { cwd: this.dir });
        if (changed.trim() !== '1') throw new Error(`no session of ${login} to age (sqlite3 said ${JSON.stringify(changed)})`);
    }

    /** Every mail in the outbox to `to`, oldest first: `{ subject, text }`, bodies decoded. */
    async mails(to) {
        let names;
        try {
            names = (await readdir(this.outbox)).filter((n) => n.endsWith('.eml')).sort();
        } catch {
            return [];
        }
        const found = [];
        for (const n of names) {
            const mail = parseMail(await readFile(path.join(this.outbox, n), 'utf8'));
            if (mail.to.includes(to)) found.push(mail);
        }
        return found;
    }

    /** Waits for the `skip`-th (from 0) mail to `to` whose subject contains `subject`. */
    async waitForMail(to, subject, { skip = 0 } = {}) {
        const started = Date.now();
        for (;;) {
            const matching = (await this.mails(to)).filter((m) => m.subject.includes(subject));
            if (matching.length > skip) return matching[skip];
            if (Date.now() - started > DEADLINE_MS) {
                const subjects = (await this.mails(to)).map((m) => m.subject);
                throw new Error(`no mail "${subject}" #${skip + 1} to ${to} within ${DEADLINE_MS} ms; mails to them: ${JSON.stringify(subjects)}`);
            }
            await sleep(100);
        }
    }

    /** The code of the `n`-th (from 0) "Your login code" mail to `login`. */
    async loginCode(login, n) {
        const mail = await this.waitForMail(`${login}@example.com`, 'login code', { skip: n });
        const match = mail.text.match(/Your login code is (\d{6})/);
        if (!match) throw new Error(`no code in the login-code mail:\n${mail.text}`);
        return match[1];
    }

    async stop() {
        await stopProcess(this.child);
    }

    /** Removes the temporary directory (kept when a test failed, for its logs). */
    async cleanUp() {
        await rm(this.dir, { recursive: true, force: true });
    }
}

/** Reads `serve`'s standard output up to the end of its banner; returns the setup link. */
function readBanner(child, logFile) {
    return new Promise((resolve, reject) => {
        let text = '';
        const timer = setTimeout(async () => {
            reject(new Error(`serve printed no banner within ${DEADLINE_MS} ms: ${JSON.stringify(text)}\n${await readText(logFile)}`));
        }, DEADLINE_MS);
        child.stdout.on('data', (d) => {
            text += stripAnsi(String(d));
            if (/^Or from a shell|^Log in at/m.test(text)) {
                clearTimeout(timer);
                const link = text.match(/http:\/\/\S+\/setup\/\S+/);
                resolve(link ? link[0] : null);
            }
        });
        child.on('exit', async (code) => {
            clearTimeout(timer);
            reject(new Error(`serve exited (${code}) before its banner:\n${text}\n${await readText(logFile)}`));
        });
    });
}

/** Headers and text body of an `.eml`: quoted-printable decoded, text/plain part only. */
export function parseMail(raw) {
    const text = raw.replace(/\r\n/g, '\n');
    const headerEnd = text.indexOf('\n\n');
    const head = text.slice(0, headerEnd).replace(/\n[ \t]+/g, ' ');
    const header = (name) => (head.match(new RegExp(`^${name}: (.*)$`, 'mi')) || [])[1] || '';
    let body = text.slice(headerEnd + 2);
    // The plain part of a multipart/alternative mail comes first.
    const plain = body.match(/Content-Type: text\/plain[^\n]*\n(?:[^\n]+\n)*\n([\s\S]*?)\n--/i);
    if (plain) body = plain[1];
    return { to: header('To'), subject: header('Subject'), text: decodeQuotedPrintable(body) };
}

function decodeQuotedPrintable(s) {
    const joined = s.replace(/=\n/g, '');
    const bytes = [];
    for (let i = 0; i < joined.length; i++) {
        const hex = joined.slice(i + 1, i + 3);
        if (joined[i] === '=' && /^[0-9A-F]{2}$/i.test(hex)) {
            bytes.push(parseInt(hex, 16));
            i += 2;
        } else {
            bytes.push(...Buffer.from(joined[i], 'utf8'));
        }
    }
    return Buffer.from(bytes).toString('utf8');
}
