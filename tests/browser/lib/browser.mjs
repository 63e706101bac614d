// The browser side: Debian's Chromium driven by playwright-core (which never downloads a
// browser), the two screen sizes, an authenticator that never reuses a time step, the QR
// decoder, and the checks run on every page a journey visits (axe-core, labels,
// autocomplete, input modes) with a screenshot of each.

import { chromium } from 'playwright-core';
import AxeBuilder from '@axe-core/playwright';
import jsQR from 'jsqr';
import * as OTPAuth from 'otpauth';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { OUT_DIR, sleep } from './env.mjs';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
];

/** Both screen sizes; BROWSER_VIEWPORTS=phone (or desktop) runs one, while working on it. */
export const VIEWPORTS = [
    { name: 'desktop', viewport: { width: 1280, height: 800 }, isMobile: false },
    { name: 'phone', viewport: { width: 390, height: 844 }, isMobile: true },
].filter((vp) => (process.env.BROWSER_VIEWPORTS || 'desktop,phone').split(',').includes(vp.name));

export function launchBrowser() {
    return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
}

/**
 * A fresh browser profile (cookies, storage) at one screen size; `storageState` starts it
 * with the cookies of another (a signed-in administrator, for instance).
 */
export async function newContext(browser, vp, { javaScriptEnabled = true, storageState } = {}) {
    const context = await browser.newContext({
        storageState,
        viewport: vp.viewport,
        isMobile: vp.isMobile,
        hasTouch: vp.isMobile,
        deviceScaleFactor: 1,
        javaScriptEnabled,
        locale: 'en-GB',
    });
    context.setDefaultTimeout(30_000);
    return context;
}

// ---------------------------------------------------------------------------------------
// TOTP

const PERIOD = 30;
const currentStep = () => Math.floor(Date.now() / 1000 / PERIOD);

/**
 * An authenticator app for one secret. Bulwark accepts one step either side of now, and
 * never the same step twice: each code is for the earliest step that is not older than now
 * and newer than the last one given, waiting for the clock when that step is still too far
 * ahead.
 */
export class Authenticator {
    constructor(secretBase32) {
        this.totp = new OTPAuth.TOTP({
            secret: OTPAuth.Secret.fromBase32(secretBase32),
            algorithm: 'SHA1',
            digits: 6,
            period: PERIOD,
        });
        this.lastStep = null;
    }

    async code() {
        for (;;) {
            const now = currentStep();
            const step = this.lastStep === null ? now : Math.max(this.lastStep + 1, now);
            if (step <= now + 1) {
                this.lastStep = step;
                return this.totp.generate({ timestamp: step * PERIOD * 1000 });
            }
            await sleep((now + 1) * PERIOD * 1000 - Date.now() + 200);
        }
    }
}

// ---------------------------------------------------------------------------------------
// QR code

/**
 * Decodes the QR image `img` shows: the page draws it on a canvas with a white margin and
 * hands over the pixels (base64, to keep the transfer small); jsQR reads them. Returns the
 * text in the code.
 */
export async function decodeQr(img) {
    const { width, height, rgba } = await img.evaluate(async (el) => {
        await el.decode();
        const size = 200;
        const margin = 20;
        const canvas = document.createElement('canvas');
        canvas.width = size + 2 * margin;
        canvas.height = size + 2 * margin;
        const ctx = canvas.getContext('2d');
        ctx.fillStyle = '#fff';
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(el, margin, margin, size, size);
        const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
        let binary = '';
        for (let i = 0; i < pixels.data.length; i += 0x8000) {
            binary += String.fromCharCode(...pixels.data.subarray(i, i + 0x8000));
        }
        return { width: pixels.width, height: pixels.height, rgba: btoa(binary) };
    });
    const found = jsQR(new Uint8ClampedArray(Buffer.from(rgba, 'base64')), width, height);
    assert.ok(found, 'the QR code on the enrolment page could not be decoded');
    return found.data;
}

// ---------------------------------------------------------------------------------------
// Checks on every page

/** What each kind of field must say to browsers and password managers. */
function expectedAutocomplete(field, { adminPage }) {
    if (field.type === 'password') {
        // On admin pages a password field is always the admin's own, typed again.
        return /new|confirm/.test(field.name) ? 'new-password' : 'current-password';
    }
    // There the other fields describe someone else: no filling in the admin's own login,
    // address or name.
    if (adminPage) {
        return ['login', 'email', 'display_name', 'groups'].includes(field.name) ? 'off' : null;
    }
    if (['login', 'username', 'login_or_email'].includes(field.name)) return 'username';
    if (field.name === 'code' && field.id !== 'recovery_code') return 'one-time-code';
    if (field.name === 'email') return 'email';
    return null;
}

/**
 * Runs axe-core (no serious or critical violation allowed) and the form checks on the page,
 * then saves a full-page screenshot as OUT_DIR/screens/VIEWPORT/NAME.png.
 */
export async function checkPage(page, vp, name, { axe = true } = {}) {
    await page.waitForLoadState('load');
    const problems = [];
    const adminPage = new URL(page.url()).pathname.startsWith('/admin');
    const fields = await page.$$eval('input, select, textarea', (els) => els.map((el) => {
        const labelText = [...(el.labels || [])].map((l) => l.textContent.trim()).join(' ');
        return {
            tag: el.tagName.toLowerCase(),
            type: el.type,
            name: el.name,
            id: el.id,
            hidden: el.type === 'hidden' || el.hidden,
            label: labelText || el.getAttribute('aria-label') || '',
            autocomplete: el.getAttribute('autocomplete'),
            inputmode: el.getAttribute('inputmode'),
        };
    }));
    for (const f of fields.filter((x) => !x.hidden)) {
        const what = `${f.tag}[name=${f.name}]`;
        if (!f.label) problems.push(`${what} has no label`);
        const want = expectedAutocomplete(f, { adminPage });
        if (want && f.autocomplete !== want) {
            problems.push(`${what} has autocomplete=${JSON.stringify(f.autocomplete)}, expected "${want}"`);
        }
        if (f.name === 'code' && f.id !== 'recovery_code' && f.inputmode !== 'numeric') {
            problems.push(`${what} has inputmode=${JSON.stringify(f.inputmode)}, expected "numeric"`);
        }
    }
    // A hidden username next to a password lets password managers save the right login.
    for (const f of fields.filter((x) => x.hidden && x.name === 'username')) {
        if (f.autocomplete !== 'username') problems.push(`hidden username field lacks autocomplete=username`);
    }
    // Usable on a phone: nothing wider than the screen (wide tables scroll in their box).
    const overflow = await page.evaluate(() => {
        const root = document.documentElement;
        if (root.scrollWidth <= root.clientWidth) return null;
        // Suspects: what sticks out, except the insides of a box that scrolls them.
        const suspects = [...document.querySelectorAll('body *')]
            .filter((el) => el.getBoundingClientRect().right > root.clientWidth + 0.5)
            .filter((el) => !el.parentElement.closest('.table') || getComputedStyle(el).position === 'absolute')
            .map((el) => `${el.tagName.toLowerCase()}${el.className ? `.${el.className}` : ''}`)
            .slice(0, 5);
        return `${root.scrollWidth} px wide (${suspects.join(', ')})`;
    }).catch(() => null);
    if (overflow) problems.push(`page wider than the ${vp.viewport.width} px screen: ${overflow}`);
    const started = Date.now();
    if (axe) {
        const result = await new AxeBuilder({ page }).analyze();
        if (process.env.BROWSER_TIMING) console.error(`${new Date().toISOString()} ${vp.name} ${name}: axe ${Date.now() - started} ms`);
        for (const v of result.violations) {
            if (v.impact === 'serious' || v.impact === 'critical') {
                const where = v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ');
                problems.push(`axe ${v.impact}: ${v.id} (${v.help}) at ${where}`);
            }
        }
    }
    await screenshot(page, vp, name);
    assert.deepEqual(problems, [], `${name} at ${vp.name} width (${page.url()})`);
}

export async function screenshot(page, vp, name) {
    const dir = path.join(OUT_DIR, 'screens', vp.name);
    await mkdir(dir, { recursive: true });
    await page.screenshot({ path: path.join(dir, `${name}.png`), fullPage: true });
}
