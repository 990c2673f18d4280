// Shared by the browser tests: a `mqtt-policy serve` on a free loopback port (stopped by the
// test, by PID), and Debian's Chromium driven by playwright-core.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const ROOT = resolve(import.meta.dirname, '../..');
export const ARTIFACTS = process.env.PLAYGROUND_ARTIFACTS || join(ROOT, 'test-artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

const BIN = process.env.MQTT_POLICY_BIN || join(ROOT, 'target/debug/mqtt-policy');

/// Starts the host; resolves once it prints where the playground is.
export function startHost() {
  const stateDir = mkdtempSync(join(tmpdir(), 'mqtt-policy-pg-'));
  const child = spawn(BIN, ['serve', '--dev', '--listen', '127.0.0.1:0', '--ops-listen', '127.0.0.1:0', '--state-dir', stateDir,
    '--policy', join(ROOT, 'policies/celine.json')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const lines = createInterface({ input: child.stdout });
  const ready = new Promise((ok, fail) => {
    lines.on('line', (line) => {
      const m = /^mqtt-policy playground at (\S+)$/.exec(line);
      if (m) ok(m[1]);
    });
    child.on('exit', (code) => fail(new Error(`mqtt-policy exited (${code}) before serving the playground:\n${stderr}`)));
  });
  const stop = () => new Promise((done) => {
    if (child.exitCode !== null || child.signalCode !== null) { done(); return; }
    child.once('exit', () => done());
    process.kill(child.pid, 'SIGTERM');
  }).then(() => rmSync(stateDir, { recursive: true, force: true }));
  return ready.then((url) => ({ url, stop, pid: child.pid }));
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}

/// Opens the playground in a new page and waits until it has decided the default request.
/// Console errors and page errors are collected in `page.problems`.
export async function open(browser, url, { viewport = { width: 1366, height: 900 } } = {}) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (m) => { if (m.type() === 'error') page.problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector('body[data-ready=true]');
  return page;
}

/// Sets the editor's text as a person's paste would, and waits until the page has loaded it.
export async function setPolicy(page, text) {
  const before = await page.evaluate(() => Number(document.body.dataset.loads || 0));
  await page.locator('#policy').fill(text);
  await page.waitForFunction((n) => Number(document.body.dataset.loads || 0) > n, before);
}

export async function verdict(page) {
  return page.locator('#decision-verdict').textContent();
}

/// Waits until the decision box shows `want` ('ALLOW', 'DENY' or 'No decision').
export async function expectVerdict(page, want) {
  await page.waitForFunction((w) => document.getElementById('decision-verdict').textContent === w, want,
    { timeout: 5000 }).catch(async () => {
    throw new Error(`expected ${want}, the page shows ${await verdict(page)}: ${await page.locator('#decision-reason').textContent()}`);
  });
}

/// A JWT with the given claims and a signature that is not one: the playground never verifies.
export function fakeJwt(claims) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'RS256', typ: 'JWT', kid: 'test-key' })}.${part(claims)}.bm90LWEtc2lnbmF0dXJl`;
}
