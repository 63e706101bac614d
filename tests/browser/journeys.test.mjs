// Every user journey of Bulwark's pages in a real browser, at desktop and at phone width.
//
// Each screen size gets its own `bulwark serve` (the first-administrator setup link works
// once per server), nginx with deploy/nginx/bulwark-odoo.conf and a stand-in application.
// The journeys of one size share that server and run in parallel, each as its own user
// and browser profile; the admin console's acts are done by a second administrator whose
// signed-in cookies each journey copies. The compliance journey, which counts everyone,
// runs once the others are done. Every page visited is checked (labels, autocomplete,
// input modes, width, and axe-core unless it already checked that page in a fuller state)
// and screenshotted into target/browser/screens/.
//
// Run: `npm ci && npm test` here, after `cargo build -p bulwark-server`; scripts/test does both.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import * as OTPAuth from 'otpauth';
import {
    Bulwark, DEADLINE_MS, OUT_DIR, freePort, sleep, startNginx, startUpstream,
} from './lib/env.mjs';
import {
    Authenticator, VIEWPORTS, checkPage, decodeQr, launchBrowser, newContext, screenshot,
} from './lib/browser.mjs';

/** A password every preset accepts; the policy's context words are not in it. */
const STRONG = 'Correct-Horse-Battery-Staple-42';
/** Long enough for the browser's own `minlength` check, refused by the server's rules. */
const WEAK = 'password1234';

let browser;
before(async () => {
    await rm(path.join(OUT_DIR, 'screens'), { recursive: true, force: true });
    browser = await launchBrowser();
});
after(async () => {
    await browser?.close();
});

// ---------------------------------------------------------------------------------------
// Helpers shared by the journeys

/** The path of the page the browser shows now, with its query. */
function where(page) {
    const url = new URL(page.url());
    return url.pathname + url.search;
}

async function expectPath(page, pathname) {
    await page.waitForURL((url) => url.pathname === pathname, { timeout: DEADLINE_MS });
}

async function logIn(page, env, login, password) {
    await page.goto(`${env.bulwark.base}/login`);
    await page.getByLabel('Login').fill(login);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await page.getByRole('button', { name: 'Log in' }).click();
}

async function logOut(page) {
    await page.getByRole('button', { name: 'Log out', exact: true }).first().click();
    await expectPath(page, '/login');
}

/** At the second step of a user with no authenticator: asks for a code by mail, enters it. */
async function secondStepByMail(page, env, vp, login, n, { shots = n === 0 } = {}) {
    await expectPath(page, '/login/2fa');
    await page.getByRole('button', { name: 'E-mail me a code' }).click();
    await page.waitForURL(/sent=1/);
    await assert.doesNotReject(page.getByRole('status').filter({ hasText: 'We sent a code' }).waitFor());
    if (shots) await checkPage(page, vp, 'second-step-email');
    await page.getByLabel('Code', { exact: true }).fill(await env.bulwark.loginCode(login, n));
    await page.getByRole('button', { name: 'Continue' }).click();
}

/**
 * On /account/security: re-enters the password, checks that the QR code and the key shown
 * as text are the same secret, confirms a code. Returns the authenticator and the recovery
 * codes it showed.
 */
async function enrol(page, env, vp, { password, login, shots = false }) {
    await expectPath(page, '/account/security');
    await page.getByLabel('Your password').fill(password);
    await page.getByRole('button', { name: /Set up an authenticator app/ }).click();
    const qr = page.getByRole('img', { name: /QR code/ });
    await qr.waitFor();
    const shownKey = (await page.locator('.secret code').textContent()).replace(/\s+/g, '');
    const fromQr = OTPAuth.URI.parse(await decodeQr(qr));
    assert.equal(fromQr.secret.base32, shownKey, 'the QR code and the text key differ');
    assert.equal(fromQr.label, login);
    assert.equal(fromQr.issuer, 'Bulwark');
    assert.equal(fromQr.digits, 6);
    assert.equal(fromQr.period, 30);
    // The set-up link under the QR code is the same URI.
    const uriText = (await page.locator('.uri code').textContent()).trim();
    assert.equal(OTPAuth.URI.parse(uriText).secret.base32, shownKey);
    if (shots) await checkPage(page, vp, 'enrol-qr');
    const app = new Authenticator(shownKey);
    await page.getByLabel('Code from the app').fill(await app.code());
    await page.getByRole('button', { name: 'Turn on' }).click();
    await page.getByRole('heading', { name: 'Your recovery codes' }).waitFor();
    const codes = (await page.locator('ol.codes code').allTextContents()).map((c) => c.trim());
    assert.equal(codes.length, 10, 'ten recovery codes');
    assert.equal(new Set(codes).size, 10, 'the recovery codes differ from each other');
    // Each code on one line, so that it can be read and copied as one.
    const lines = await page.locator('ol.codes code').evaluateAll((els) => els.map((el) => el.getClientRects().length));
    assert.deepEqual(lines, Array(10).fill(1), 'a recovery code is broken over two lines');
    if (shots) await checkPage(page, vp, 'recovery-codes');
    return { app, codes };
}

/**
 * Follows "I have saved them: continue" on the recovery-code page, which leads back to the
 * security page (now showing two-factor on) unless the enrolment had somewhere to return to.
 */
async function continueAfterCodes(page) {
    await page.getByRole('link', { name: /I have saved them/ }).click();
}

async function continueToAccount(page, env) {
    await continueAfterCodes(page);
    await expectPath(page, '/account/security');
    await page.getByText('On: an authenticator app is required at login').waitFor();
    await page.goto(`${env.bulwark.base}/account`);
    await expectPath(page, '/account');
}

/** The text of the fact `name` in a page's list of facts (`<dt>name</dt><dd>…</dd>`). */
async function fact(page, name) {
    const value = await page.locator('dl.facts').evaluate((dl, wanted) => {
        const dt = [...dl.querySelectorAll('dt')].find((d) => d.textContent.trim() === wanted);
        return dt ? dt.nextElementSibling.textContent.trim() : null;
    }, name);
    assert.notEqual(value, null, `no fact "${name}" on ${page.url()}`);
    return value;
}

/** A whole number that starts a fact: "3 (75.0 %)" gives 3. */
const count = async (page, name) => Number((await fact(page, name)).match(/^\d+/)[0]);

/** The logins in the table of the region `name` (a table's first column links to the user). */
async function loginsIn(page, name) {
    const region = page.getByRole('region', { name, exact: true });
    if (await region.count() === 0) return [];
    return (await region.locator('tbody tr td:first-child').allTextContents()).map((t) => t.trim());
}

/** Follows the link `name` that starts a download; resolves to the downloaded file's text. */
async function download(page, name) {
    const [file] = await Promise.all([
        page.waitForEvent('download'),
        page.getByRole('link', { name }).click(),
    ]);
    const failure = await file.failure();
    assert.equal(failure, null, `the download "${name}" failed`);
    return { name: file.suggestedFilename(), text: await readFile(await file.path(), 'utf8') };
}

/** Runs `body` with a fresh browser profile; on failure keeps a screenshot of the last page. */
async function withPage(vp, name, body, options) {
    const context = await newContext(browser, vp, options);
    const page = await context.newPage();
    try {
        await body(page);
    } catch (e) {
        await screenshot(page, vp, `FAILED-${name}`).catch(() => {});
        e.message += `\n(at ${page.url()})`;
        throw e;
    } finally {
        await context.close();
    }
}

/**
 * Runs `body` in a browser profile signed in as the console's administrator (a copy of
 * their cookies: the same session, so opened without a new code).
 */
async function withAdmin(env, vp, name, body) {
    const { storageState } = await env.consoleAdmin();
    await withPage(vp, name, body, { storageState });
}

/** The administrator of the console journeys, apart from the first one so as not to wait for them. */
const CONSOLE_ADMIN = 'ops';

/**
 * Sets up the console's administrator once per server: created with a password by the CLI,
 * a code by mail at the first login (admins must use two-factor), enrolment. Resolves to
 * their signed-in cookies and their authenticator.
 */
async function setUpConsoleAdmin(env, vp) {
    // The setup link works only while there is no administrator.
    await env.setupLinkUsed;
    await env.bulwark.addUser(CONSOLE_ADMIN, STRONG, { groups: ['admins'], name: 'Olive Ops' });
    let result;
    await withPage(vp, 'console-admin', async (page) => {
        await logIn(page, env, CONSOLE_ADMIN, STRONG);
        await secondStepByMail(page, env, vp, CONSOLE_ADMIN, 0, { shots: false });
        const { app } = await enrol(page, env, vp, { password: STRONG, login: CONSOLE_ADMIN });
        await continueToAccount(page, env);
        // The account page leads to the console.
        await page.getByRole('link', { name: 'Administration' }).first().click();
        await expectPath(page, '/admin/users');
        result = { app, storageState: await page.context().storageState() };
    });
    return result;
}

// ---------------------------------------------------------------------------------------
// The journeys

/**
 * The first administrator: setup link → forced enrolment → recovery codes; logout, then a
 * keyboard-only login with the app's code and "trust this browser"; then a login without
 * a code.
 */
async function firstAdministrator(env, vp) {
    await withPage(vp, 'admin', async (page) => {
        try {
            assert.ok(env.bulwark.setupLink, 'serve printed a setup link');
            await page.goto(env.bulwark.setupLink);
            await expectPath(page, '/password/set');
            await page.getByRole('heading', { name: 'Create the first administrator' }).waitFor();
            await checkPage(page, vp, 'setup');
            await page.getByLabel('Login').fill('admin');
            await page.getByLabel('E-mail').fill('admin@example.com');
            await page.getByLabel('Your name').fill('Ada Admin');
            await page.getByLabel('New password', { exact: true }).fill(STRONG);
            await page.getByLabel('New password again').fill(STRONG);
            await page.getByRole('button', { name: 'Create administrator' }).click();
            await expectPath(page, '/login');
        } finally {
            // Other administrators may be added now (or, if this failed, fail on their own).
            env.markSetupLinkUsed();
        }
        await checkPage(page, vp, 'login-after-setup');

        // Two-factor is required from the first login: a code by mail, then set-up.
        await logIn(page, env, 'admin', STRONG);
        await secondStepByMail(page, env, vp, 'admin', 0);
        await expectPath(page, '/account/security');
        await checkPage(page, vp, 'security-enrolment-required');
        // Nothing else is reachable until an authenticator is set up.
        await page.goto(`${env.bulwark.base}/account`);
        await expectPath(page, '/account/security');

        const { app } = await enrol(page, env, vp, { password: STRONG, login: 'admin', shots: true });
        await continueToAccount(page, env);
        await assert.doesNotReject(page.getByText('on, 10 recovery codes left').waitFor());
        await checkPage(page, vp, 'account');
        await logOut(page);
        await checkPage(page, vp, 'login');

        // Keyboard only: the login field has the focus, Tab moves on, Enter submits.
        await page.goto(`${env.bulwark.base}/login`);
        assert.equal(await page.evaluate(() => document.activeElement?.id), 'login');
        await page.keyboard.type('admin');
        await page.keyboard.press('Tab');
        assert.equal(await page.evaluate(() => document.activeElement?.id), 'password');
        await page.keyboard.type(STRONG);
        await page.keyboard.press('Enter');
        await expectPath(page, '/login/2fa');
        await checkPage(page, vp, 'second-step-totp');
        assert.equal(await page.evaluate(() => document.activeElement?.id), 'code');
        await page.keyboard.type(await app.code());
        await page.keyboard.press('Tab');
        assert.equal(await page.evaluate(() => document.activeElement?.name), 'remember');
        await page.keyboard.press('Space');
        assert.ok(await page.getByRole('checkbox', { name: /Trust this browser/ }).isChecked());
        await page.keyboard.press('Tab');
        assert.equal(await page.evaluate(() => document.activeElement?.textContent.trim()), 'Continue');
        await page.keyboard.press('Enter');
        await expectPath(page, '/account');

        // The trusted browser skips the second step.
        await logOut(page);
        await logIn(page, env, 'admin', STRONG);
        await expectPath(page, '/account');
        await page.goto(`${env.bulwark.base}/account/security`);
        await assert.doesNotReject(page.getByRole('cell', { name: /Chrom/ }).first().waitFor());
        await checkPage(page, vp, 'security-trusted-device');
    });
}

/**
 * An invited user: an administrator adds them in the console → invitation mail → a weak
 * password first (every failed rule listed) → a good one → enrolment; then the phone is
 * lost: a recovery code; then the administrator resets their two-factor in the console and
 * they set it up again.
 */
async function invitedUser(env, vp) {
    const login = 'bob';
    const email = `${login}@example.com`;
    await withAdmin(env, vp, 'invited-admin', async (admin) => {
        await admin.goto(`${env.bulwark.base}/admin/users`);
        await admin.getByRole('link', { name: 'Add a user' }).click();
        await expectPath(admin, '/admin/users/new');
        // The admin's password was checked at login, minutes ago: no password field.
        assert.equal(await admin.locator('input[type=password]').count(), 0);
        await checkPage(admin, vp, 'admin-user-new');
        await admin.getByLabel('Login').fill(login);
        await admin.getByLabel('E-mail').fill(email);
        await admin.getByLabel('Name').fill('Bob Marsh');
        assert.equal(await admin.getByLabel('Groups').inputValue(), 'internal');
        await admin.getByRole('button', { name: 'Create and invite' }).click();
        await expectPath(admin, `/admin/users/${login}`);
        await admin.getByRole('status').filter({ hasText: 'created and invited' }).waitFor();
        assert.equal(await fact(admin, 'Password'), 'not set');
        assert.equal(await fact(admin, 'Groups'), 'internal');
        // The same page as 'admin-user' below, which axe-core checks.
        await checkPage(admin, vp, 'admin-user-invited', { axe: false });

        const invitation = await env.bulwark.waitForMail(email, 'Set up your account');
        const link = invitation.text.match(/http:\/\/\S+\/invite\/[A-Za-z0-9_-]+/);
        assert.ok(link, `an invitation link in:\n${invitation.text}`);
        await withPage(vp, 'invited', (page) => invitedUserSteps(env, vp, admin, page, link[0]));
    });
}

/** The invited user's part, at `link`, with the administrator's console open in `admin`. */
async function invitedUserSteps(env, vp, admin, page, link) {
    const login = 'bob';
    const email = `${login}@example.com`;
    await page.goto(link);
    await expectPath(page, '/password/set');
    await page.getByRole('heading', { name: /Welcome/ }).waitFor();
    await checkPage(page, vp, 'invitation');

    // Too short: the browser itself refuses, from the field's `minlength`.
    const field = page.getByLabel('New password', { exact: true });
    await field.fill('short-pw');
    await page.getByLabel('New password again').fill('short-pw');
    await page.getByRole('button', { name: 'Set password' }).click();
    assert.match(await field.evaluate((el) => el.validationMessage), /12/);
    await expectPath(page, '/password/set');

    // A weak password: the page says which rules it breaks, in plain words.
    await page.getByLabel('New password', { exact: true }).fill(WEAK);
    await page.getByLabel('New password again').fill(WEAK);
    await page.getByRole('button', { name: 'Set password' }).click();
    const alert = page.getByRole('alert');
    await alert.waitFor();
    assert.ok(await alert.isVisible());
    const reasons = (await alert.locator('li').allTextContents()).join('\n');
    assert.match(reasons, /common|guess/i, `a guessability rule is named:\n${reasons}`);
    assert.ok(await page.locator('details.rules').evaluate((d) => d.open), 'the rules are shown');
    await checkPage(page, vp, 'password-rejected');

    await page.getByLabel('New password', { exact: true }).fill(STRONG);
    await page.getByLabel('New password again').fill(STRONG);
    await page.getByRole('button', { name: 'Set password' }).click();
    await expectPath(page, '/login');

    await logIn(page, env, login, STRONG);
    await secondStepByMail(page, env, vp, login, 0);
    const { codes } = await enrol(page, env, vp, { password: STRONG, login });
    await continueToAccount(page, env);
    await logOut(page);

    // The phone is lost: a recovery code instead of the app's code.
    await logIn(page, env, login, STRONG);
    await expectPath(page, '/login/2fa');
    await page.getByText('Lost your phone?').click();
    await page.getByLabel('Recovery code').fill(codes[3]);
    await page.getByRole('button', { name: /recovery code/i }).click();
    await expectPath(page, '/account');
    await assert.doesNotReject(page.getByText('on, 9 recovery codes left').waitFor());
    await env.bulwark.waitForMail(email, 'A recovery code was used');

    // The administrator resets their two-factor from the console.
    await admin.goto(`${env.bulwark.base}/admin/users/${login}`);
    assert.equal(await fact(admin, 'Two-factor'), 'on');
    assert.equal(await fact(admin, 'Recovery codes left'), '9');
    await checkPage(admin, vp, 'admin-user');
    await admin.getByRole('button', { name: 'Reset two-factor' }).click();
    await admin.getByRole('status').filter({ hasText: 'Two-factor authentication was reset' }).waitFor();
    assert.match(await fact(admin, 'Two-factor'), /^off/);
    assert.equal(await fact(admin, 'Recovery codes left'), '0');
    // The reset ended every session of the user and is in their recent events.
    await admin.getByRole('heading', { name: 'Sessions (0)' }).waitFor();
    const reset = admin.getByRole('region', { name: 'Recent events' }).locator('tr', { hasText: 'totp_reset_by_admin' });
    assert.equal((await reset.locator('td').nth(3).textContent()).trim(), CONSOLE_ADMIN, 'the admin is the actor');
    await env.bulwark.waitForMail(email, 'two-factor authentication was reset');
    // Every session ended: the next page is the login.
    await page.goto(`${env.bulwark.base}/account`);
    await expectPath(page, '/login');
    await logIn(page, env, login, STRONG);
    await secondStepByMail(page, env, vp, login, 1);
    await enrol(page, env, vp, { password: STRONG, login });
    await continueToAccount(page, env);
    await admin.reload();
    assert.equal(await fact(admin, 'Two-factor'), 'on');
}

/** Wrong passwords until the account locks: the message says so and what to do. */
async function lockout(env, vp) {
    const login = 'carol';
    await env.bulwark.addUser(login, STRONG, { groups: ['portal'] });
    await withPage(vp, 'lockout', async (page) => {
        const messages = [];
        for (let attempt = 1; attempt <= 8; attempt++) {
            await logIn(page, env, login, `wrong-password-${attempt}`);
            const text = (await page.getByRole('alert').textContent()).trim();
            messages.push(text);
            if (/locked/.test(text)) break;
            // A 429 asks to wait: wait as long as it says.
            const wait = text.match(/Wait (\d+) second/);
            if (wait) await sleep(Number(wait[1]) * 1000 + 100);
        }
        assert.equal(messages[0], 'Incorrect login or password.');
        assert.match(messages.at(-1), /locked\. Try again in \d+ minutes, or ask an administrator to unlock it/);
        await checkPage(page, vp, 'locked');
        // Even the right password is refused now.
        await logIn(page, env, login, STRONG);
        await assert.doesNotReject(page.getByRole('alert').filter({ hasText: 'locked' }).waitFor());

        // An administrator finds them with the "Locked" filter and unlocks them.
        await withAdmin(env, vp, 'lockout-admin', async (admin) => {
            await admin.goto(`${env.bulwark.base}/admin/users`);
            await admin.getByLabel('Show').selectOption({ label: 'Locked' });
            await admin.getByRole('button', { name: 'Filter' }).click();
            await admin.waitForURL(/status=locked/);
            assert.ok((await loginsIn(admin, 'Users')).includes(login), 'the locked user is listed');
            await admin.getByRole('link', { name: login, exact: true }).click();
            await expectPath(admin, `/admin/users/${login}`);
            assert.match(await fact(admin, 'State'), /locked until/);
            await checkPage(admin, vp, 'admin-user-locked', { axe: false });
            await admin.getByRole('button', { name: 'Unlock', exact: true }).click();
            await admin.getByRole('status').filter({ hasText: 'The account is unlocked.' }).waitFor();
            assert.equal(await fact(admin, 'State'), 'active');
            assert.equal(await admin.getByRole('button', { name: 'Unlock', exact: true }).count(), 0);
        });
        await logIn(page, env, login, STRONG);
        await expectPath(page, '/account');

        // The other pages of a signed-in user, and those of a signed-out one.
        await page.goto(`${env.bulwark.base}/password/change`);
        await checkPage(page, vp, 'password-change');
        await page.goto(`${env.bulwark.base}/account/api-keys`);
        await checkPage(page, vp, 'api-keys');
        await logOut(page);
        await page.goto(`${env.bulwark.base}/password/forgot`);
        await checkPage(page, vp, 'password-forgot');
        await page.goto(`${env.bulwark.base}/no/such/page`);
        await checkPage(page, vp, 'not-found');
    });
}

/**
 * The gateway: the protected application (behind real nginx) sends the browser to log in,
 * then to set up an authenticator (its rule asks for two factors), then back.
 */
async function gatewayRoundTrip(env, vp) {
    const login = 'dave';
    await env.bulwark.addUser(login, STRONG, { groups: ['portal'], name: 'Dave Stone' });
    await withPage(vp, 'gateway', async (page) => {
        const app = `${env.nginx.origin}/web?action=menu`;
        await page.goto(app);
        await expectPath(page, '/login');
        assert.equal(new URL(page.url()).origin, env.bulwark.base);
        assert.equal(await page.locator('input[name=next]').inputValue(), app);
        await checkPage(page, vp, 'gateway-login');
        await page.getByLabel('Login').fill(login);
        await page.getByLabel('Password', { exact: true }).fill(STRONG);
        await page.getByRole('button', { name: 'Log in' }).click();
        // The rule asks for two factors; dave has only a password so far.
        await expectPath(page, '/account/security');
        assert.match(where(page), /prompt=required/);
        await checkPage(page, vp, 'gateway-enrolment-prompt');
        await enrol(page, env, vp, { password: STRONG, login });
        await continueAfterCodes(page);
        await page.waitForURL(app);
        assert.equal((await page.locator('#who').textContent()).trim(), `Signed in as ${login}`);
        await assert.doesNotReject(page.getByRole('cell', { name: 'Dave Stone' }).waitFor());
        await screenshot(page, vp, 'gateway-app');
        // Another page of the application passes straight through now.
        await page.goto(`${env.nginx.origin}/web/other`);
        assert.equal((await page.locator('#who').textContent()).trim(), `Signed in as ${login}`);
    });
}

/** The login, the TOTP step and enrolment work with JavaScript off (the pages use none). */
async function withoutJavaScript(env, vp) {
    const login = 'erin';
    await env.bulwark.addUser(login, STRONG, { groups: ['portal'] });
    await withPage(vp, 'no-js', async (page) => {
        await logIn(page, env, login, STRONG);
        await expectPath(page, '/account');
        await page.goto(`${env.bulwark.base}/account/security`);
        await page.getByLabel('Your password').fill(STRONG);
        await page.getByRole('button', { name: /Set up an authenticator app/ }).click();
        const key = (await page.locator('.secret code').textContent()).replace(/\s+/g, '');
        const app = new Authenticator(key);
        await page.getByLabel('Code from the app').fill(await app.code());
        await page.getByRole('button', { name: 'Turn on' }).click();
        await page.getByRole('heading', { name: 'Your recovery codes' }).waitFor();
        await continueToAccount(page, env);
        await logOut(page);
        await logIn(page, env, login, STRONG);
        await expectPath(page, '/login/2fa');
        await page.getByLabel('Code', { exact: true }).fill(await app.code());
        await page.getByRole('button', { name: 'Continue' }).click();
        await expectPath(page, '/account');
        await checkPage(page, vp, 'account-no-js', { axe: false });
    }, { javaScriptEnabled: false });
}

/**
 * The user list's search and filters, then the password check before sensitive acts: the
 * action forms have no password field while the admin's check is fresh, and a password
 * field each once it is stale; a wrong password is refused, the right one opens them again.
 */
async function adminUsersAndPasswordCheck(env, vp) {
    const login = 'hank';
    await env.bulwark.addUser(login, STRONG, { groups: ['portal'], name: 'Hank Iverson' });
    const { app } = await env.consoleAdmin();
    // A session of its own (a login with the app's code), since it is made stale below.
    await withPage(vp, 'password-check', async (page) => {
        await logIn(page, env, CONSOLE_ADMIN, STRONG);
        await expectPath(page, '/login/2fa');
        await page.getByLabel('Code', { exact: true }).fill(await app.code());
        await page.getByRole('button', { name: 'Continue' }).click();
        await expectPath(page, '/account');

        // Search and filters.
        await page.goto(`${env.bulwark.base}/admin/users`);
        assert.ok((await loginsIn(page, 'Users')).includes(login));
        await checkPage(page, vp, 'admin-users');
        await page.getByLabel('Search').fill('Iverson');
        await page.getByLabel('Show').selectOption({ label: 'Two-factor off' });
        await page.getByRole('button', { name: 'Filter' }).click();
        await page.waitForURL(/status=2fa-off/);
        assert.deepEqual(await loginsIn(page, 'Users'), [login]);
        assert.equal(await page.getByLabel('Search').inputValue(), 'Iverson', 'the search is kept');
        const row = page.getByRole('region', { name: 'Users' }).locator('tbody tr');
        assert.equal((await row.locator('td').nth(3).textContent()).trim(), 'off');
        await screenshot(page, vp, 'admin-users-filtered');
        await page.getByLabel('Show').selectOption({ label: 'Two-factor on' });
        await page.getByRole('button', { name: 'Filter' }).click();
        await page.waitForURL(/status=2fa-on/);
        assert.deepEqual(await loginsIn(page, 'Users'), []);
        await page.getByText('No user matches.').waitFor();
        await page.getByLabel('Show').selectOption({ label: 'Everyone' });
        await page.getByRole('button', { name: 'Filter' }).click();
        await page.waitForURL(/status=all/);
        await page.getByRole('link', { name: login, exact: true }).click();
        await expectPath(page, `/admin/users/${login}`);
        assert.equal(await page.locator('input[type=password]').count(), 0, 'fresh: no password asked');

        // Eleven minutes later, as far as the server can tell.
        await env.bulwark.agePasswordCheck(CONSOLE_ADMIN, 11 * 60);
        await page.reload();
        await page.getByText('These actions need your password again').waitFor();
        const forms = await page.locator('form.action').count();
        assert.equal(await page.locator('form.action input[type=password]').count(), forms, 'a password field in every action');
        await checkPage(page, vp, 'admin-user-password-check');
        const endSessions = page.locator('form.action').filter({ has: page.getByRole('button', { name: 'End every session' }) });
        // The field is required: the browser itself refuses an empty one.
        await endSessions.getByRole('button').click();
        assert.ok(await endSessions.getByLabel('Your password').evaluate((el) => el.validationMessage !== ''));
        await endSessions.getByLabel('Your password').fill('not-my-password-at-all');
        await endSessions.getByRole('button').click();
        await page.getByRole('alert').filter({ hasText: 'Your password is not correct.' }).waitFor();
        await page.getByText('These actions need your password again').waitFor();
        // The page for new users asks for it too.
        await page.goto(`${env.bulwark.base}/admin/users/new`);
        assert.equal(await page.getByLabel(/Your password/).getAttribute('autocomplete'), 'current-password');
        await checkPage(page, vp, 'admin-user-new-password-check', { axe: false });
        await page.goto(`${env.bulwark.base}/admin/users/${login}`);
        const again = page.locator('form.action').filter({ has: page.getByRole('button', { name: 'End every session' }) });
        await again.getByLabel('Your password').fill(STRONG);
        await again.getByRole('button').click();
        await page.getByRole('status').filter({ hasText: 'Every session of the user was ended.' }).waitFor();
        // Checked again just now: the actions are open for the next 10 minutes.
        assert.equal(await page.locator('input[type=password]').count(), 0);
    });
}

/** The header line of the CSV export (docs/compliance.md). */
const CSV_HEADER = 'login,email,display_name,groups,two_factor,standing,grace_deadline,recovery_codes_left,last_login,password_changed,password_expires,password_expired,stale';

/**
 * The compliance page counts a user who enrols, and its CSV and JSON downloads agree with
 * it. It counts every user of the server, so it runs when the other journeys are done.
 */
async function compliance(env, vp) {
    const login = 'gina';
    await env.bulwark.addUser(login, STRONG, { groups: ['portal'], name: 'Gina Holt' });
    await withAdmin(env, vp, 'compliance-admin', async (admin) => {
        await admin.goto(`${env.bulwark.base}/admin/users`);
        await admin.getByRole('link', { name: 'Compliance' }).click();
        await expectPath(admin, '/admin/compliance');
        const active = await count(admin, 'Active users');
        const without = await count(admin, 'Without two-factor');
        const withTwoFactor = await count(admin, 'With two-factor');
        assert.ok((await loginsIn(admin, 'Users without two-factor')).includes(login));
        // The console's acts of the other journeys: one reset (bob), one lockout (carol).
        assert.equal(await fact(admin, 'Two-factor resets'), '1 in 30 days, 1 in 90 days');
        assert.equal(await fact(admin, 'Account lockouts'), '1 in 30 days, 1 in 90 days');
        await checkPage(admin, vp, 'admin-compliance');

        await withPage(vp, 'compliance-user', async (page) => {
            await logIn(page, env, login, STRONG);
            await expectPath(page, '/account');
            await page.goto(`${env.bulwark.base}/account/security`);
            await enrol(page, env, vp, { password: STRONG, login });
            await continueToAccount(page, env);
        });

        await admin.reload();
        assert.equal(await count(admin, 'Active users'), active);
        assert.equal(await count(admin, 'Without two-factor'), without - 1);
        assert.equal(await count(admin, 'With two-factor'), withTwoFactor + 1);
        const listed = await loginsIn(admin, 'Users without two-factor');
        assert.ok(!listed.includes(login), 'the enrolled user left the list');
        assert.equal(listed.length, without - 1);

        const csv = await download(admin, /Download CSV/);
        assert.match(csv.name, /^bulwark-compliance-\d{4}-\d{2}-\d{2}\.csv$/);
        const lines = csv.text.split('\r\n');
        assert.equal(lines.at(-1), '', 'the CSV ends with a line break');
        lines.pop();
        assert.equal(lines[0], CSV_HEADER);
        assert.equal(lines.length - 1, active, 'one line per active user');
        const gina = lines.find((l) => l.startsWith(`${login},`));
        assert.ok(gina, `a line for ${login}`);
        assert.equal(gina.split(',')[4], 'yes', 'two_factor');
        const off = lines.filter((l) => l.split(',')[4] === 'no').length;
        assert.equal(off, without - 1, 'as many users without two-factor as on the page');

        const json = await download(admin, /Download JSON/);
        assert.match(json.name, /^bulwark-compliance-\d{4}-\d{2}-\d{2}\.json$/);
        const report = JSON.parse(json.text);
        assert.equal(report.totals.active, active);
        assert.equal(report.totals.with_two_factor, withTwoFactor + 1);
        assert.equal(report.without_two_factor.length, without - 1);
        assert.ok(!report.without_two_factor.some((u) => u.login === login));
        await screenshot(admin, vp, 'admin-compliance-after');
    });
}

// ---------------------------------------------------------------------------------------
// One server per screen size, every journey of that size in parallel

async function startEnv(vp) {
    const upstream = await startUpstream();
    let bulwark;
    let nginx;
    try {
        const nginxPort = await freePort();
        bulwark = await Bulwark.start({ name: vp.name, gatewayOrigin: `http://127.0.0.1:${nginxPort}` });
        nginx = await startNginx({
            dir: bulwark.dir, port: nginxPort, bulwarkPort: bulwark.port, upstreamPort: upstream.port,
        });
    } catch (e) {
        // Whatever did start must stop, or it keeps this process alive.
        await bulwark?.stop();
        await upstream.stop();
        throw e;
    }
    let consoleAdmin;
    let markSetupLinkUsed;
    const env = {
        bulwark,
        nginx,
        /** Settles once the first administrator was created with the setup link. */
        setupLinkUsed: new Promise((resolve) => { markSetupLinkUsed = resolve; }),
        markSetupLinkUsed: () => markSetupLinkUsed(),
        /** The console's administrator, set up by the first journey that asks. */
        consoleAdmin() {
            consoleAdmin ??= setUpConsoleAdmin(env, vp);
            return consoleAdmin;
        },
        async stop(failed) {
            await nginx.stop();
            await bulwark.stop();
            await upstream.stop();
            if (failed || process.env.BROWSER_KEEP) {
                console.error(`logs of the ${vp.name} server kept in ${bulwark.dir}`);
            } else {
                await bulwark.cleanUp();
            }
        },
    };
    return env;
}

/**
 * The policy page: a value the configuration would refuse is refused naming the setting,
 * with what was typed kept; a good one is saved and listed with its old and new value.
 */
async function policy(env, vp) {
    await withAdmin(env, vp, 'policy-admin', async (admin) => {
        await admin.goto(`${env.bulwark.base}/admin/users`);
        await admin.getByRole('link', { name: 'Policy' }).click();
        await expectPath(admin, '/admin/policy');
        await checkPage(admin, vp, 'admin-policy');
        const idle = admin.getByLabel('Sign out after this many idle minutes');
        const save = async () => {
            // The other journeys may have aged the admin's password check.
            const password = admin.getByLabel(/Your password/);
            if (await password.count()) await password.fill(STRONG);
            await admin.getByRole('button', { name: 'Save changes' }).click();
        };
        assert.equal(await idle.inputValue(), '30');
        await idle.fill('0');
        await save();
        await admin.getByRole('alert').filter({ hasText: 'sessions.idle_minutes' }).waitFor();
        assert.equal(await admin.getByLabel('Sign out after this many idle minutes').inputValue(), '0', 'what was typed is kept');
        await admin.getByLabel('Sign out after this many idle minutes').fill('45');
        await save();
        await admin.getByRole('status').filter({ hasText: 'Saved: 1 setting changed.' }).waitFor();
        await admin.getByRole('cell', { name: 'sessions.idle_minutes: 30 -> 45' }).waitFor();
        assert.equal(await admin.getByLabel('Sign out after this many idle minutes').inputValue(), '45');
        await screenshot(admin, vp, 'admin-policy-saved');
    });
}

test('user journeys', { concurrency: true }, async (top) => {
    await Promise.all(VIEWPORTS.map((vp) => top.test(`at ${vp.name} width (${vp.viewport.width}×${vp.viewport.height})`, { concurrency: true }, async (t) => {
        const env = await startEnv(vp);
        let failed = false;
        t.after(() => env.stop(failed));
        // A subtest's promise resolves even when it fails: note failures on the way out.
        const run = (journey) => () => journey(env, vp).catch((e) => {
            failed = true;
            throw e;
        });
        const journeys = [
            t.test('first administrator: setup link, forced enrolment, recovery codes, keyboard-only login, trusted browser', run(firstAdministrator)),
            t.test('invited user: added in the admin console, weak then good password, enrolment, recovery code, reset in the console, enrolment again', run(invitedUser)),
            t.test('lockout after repeated wrong passwords, found and unlocked in the admin console', run(lockout)),
            t.test('admin console: user search and filters, password asked again once the last check is stale', run(adminUsersAndPasswordCheck)),
            t.test('gateway: nginx sends the browser to log in and set up two-factor, then back to the app', run(gatewayRoundTrip)),
        ];
        if (vp.name === 'desktop') {
            journeys.push(t.test('JavaScript disabled: login, enrolment and the TOTP step', run(withoutJavaScript)));
        }
        await Promise.all(journeys);
        await t.test('compliance page counts an enrolment, its CSV and JSON downloads agree', run(compliance));
        await t.test('policy page: a refused value is named, a saved one is listed with its old and new value', run(policy));
    })));
});
