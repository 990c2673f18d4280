// The playground in a real browser (Debian's Chromium through playwright-core), served by the
// host at /playground/ from the files embedded in the binary.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, ROOT, expectVerdict, fakeJwt, launch, open, setPolicy, startHost } from './harness.mjs';

const corpus = readFileSync(join(ROOT, 'corpus/conformance.jsonl'), 'utf8')
  .split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
const defaultPolicy = readFileSync(join(ROOT, 'policies/celine.json'), 'utf8');
const defaultCases = JSON.parse(readFileSync(join(ROOT, 'policies/tests/celine.json'), 'utf8')).cases;

describe('the playground served by the host', () => {
  let host;
  let browser;
  before(async () => { [host, browser] = await Promise.all([startHost(), launch()]); });
  after(async () => { await browser?.close(); await host?.stop(); });

  it('loads with no console errors, decides the default request and highlights the deciding rule', async () => {
    const page = await open(browser, host.url);
    await expectVerdict(page, 'ALLOW');
    assert.equal(await page.locator('#policy').inputValue(), defaultPolicy);
    const rule = await page.locator('#decision-rule').textContent();
    assert.ok(rule, 'the decision names its rule');
    const mark = page.locator('#highlights mark.decided-allow').first();
    assert.match(await mark.textContent(), new RegExp(`"id": "${rule}"`));
    assert.match(await page.locator('#core-version').textContent(), /^v\d+\.\d+\.\d+$/);
    // "Show rule" selects the deciding rule in the editor and scrolls to it.
    await page.locator('#show-rule').click();
    const selected = await page.locator('#policy').evaluate((t) => t.value.slice(t.selectionStart, t.selectionEnd));
    assert.match(selected, new RegExp(`^\\{\\s*"id": "${rule}"`));
    assert.ok(await page.locator('#policy').evaluate((t) => t.scrollTop > 0));
    await page.screenshot({ path: join(ARTIFACTS, 'playground.png') });
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  it('gives the conformance corpus its answers: a handful through the form, all through the engine', async () => {
    const page = await open(browser, host.url);
    const picks = [
      corpus.find((c) => c.expect === 'allow' && c.request.subject && c.expect_rule),
      corpus.find((c) => c.expect === 'deny' && c.request.subject && c.request.action === 'subscribe'),
      corpus.find((c) => c.expect === 'allow' && c.request.subject?.type === 'service'),
      corpus.find((c) => c.expect === 'deny' && c.request.action === 'publish' && c.request.subject),
      corpus.find((c) => c.expect === 'deny' && c.request.subject && c.request.topic?.startsWith('$')),
      corpus.find((c) => c.expect === 'load_error'),
    ].filter(Boolean);
    assert.ok(picks.length >= 5, `picked ${picks.length} cases`);
    for (const c of picks) {
      await setPolicy(page, JSON.stringify(c.policy, null, 2));
      if (c.expect === 'load_error') {
        await page.waitForSelector('#diagnostics li.error');
        await expectVerdict(page, 'No decision');
        continue;
      }
      const r = c.request;
      await page.getByLabel('Type', { exact: true }).selectOption(r.subject.type);
      await page.getByLabel('Id', { exact: true }).fill(r.subject.id);
      await page.getByLabel('Groups', { exact: true }).fill((r.subject.groups || []).join(', '));
      await page.getByLabel('Scopes', { exact: true }).fill((r.subject.scopes || []).join(' '));
      await page.getByLabel('Action', { exact: true }).selectOption(r.action);
      await page.getByLabel('Topic', { exact: true }).fill(r.topic ?? '');
      await page.getByLabel('Client id', { exact: true }).fill(r.clientid ?? '');
      await page.getByLabel('Username', { exact: true }).fill(r.username ?? '');
      await expectVerdict(page, c.expect === 'allow' ? 'ALLOW' : 'DENY');
      if (c.expect_rule) assert.equal(await page.locator('#decision-rule').textContent(), c.expect_rule, c.note);
    }
    const answers = await page.evaluate((cases) => cases.map((c) =>
      window.playground.evaluate(JSON.stringify(c.policy), JSON.stringify(c.request))), corpus);
    corpus.forEach((c, i) => {
      const a = answers[i];
      if (c.expect === 'load_error') assert.equal(a.ok, false, c.note);
      else assert.equal(a.decision.allow, c.expect === 'allow', `${c.note}: ${JSON.stringify(a)}`);
    });
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  it('changes the decision when a rule is edited', async () => {
    const page = await open(browser, host.url);
    await expectVerdict(page, 'ALLOW');
    const edited = defaultPolicy.replace('celine/telemetry/+/+/readings', 'celine/telemetry/+/+/summaries');
    assert.notEqual(edited, defaultPolicy);
    await setPolicy(page, edited);
    await expectVerdict(page, 'DENY');
    await setPolicy(page, defaultPolicy);
    await expectVerdict(page, 'ALLOW');
    await page.context().close();
  });

  it('decides with the message: QoS and retain flag, unknown until set', async () => {
    const page = await open(browser, host.url);
    await page.getByLabel('Type', { exact: true }).selectOption('user');
    await page.getByLabel('Id', { exact: true }).fill('adam');
    await page.getByLabel('Groups', { exact: true }).fill('admins');
    await page.getByLabel('Scopes', { exact: true }).fill('');
    await page.getByLabel('Action', { exact: true }).selectOption('publish');
    await page.getByLabel('Topic', { exact: true }).fill('celine/telemetry/meter/m1/readings');
    // Unknown retain flag: the default policy's no-retained-telemetry deny applies.
    await expectVerdict(page, 'DENY');
    assert.equal(await page.locator('#decision-rule').textContent(), 'no-retained-telemetry');
    await page.locator('#qos').selectOption('0');
    await page.locator('#retain').selectOption('false');
    await expectVerdict(page, 'ALLOW');
    await page.locator('#retain').selectOption('true');
    await expectVerdict(page, 'DENY');
    // A subscription has no retain flag: the field is off for it.
    await page.getByLabel('Action', { exact: true }).selectOption('subscribe');
    assert.equal(await page.locator('#retain').isDisabled(), true);
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  it('reports invalid JSON with the path and place it broke in', async () => {
    const page = await open(browser, host.url);
    const broken = defaultPolicy.replace('"effect": "deny"', '"effect" "deny"');
    assert.notEqual(broken, defaultPolicy);
    await setPolicy(page, broken);
    const item = page.locator('#diagnostics li.error').first();
    await item.waitFor();
    const text = await item.textContent();
    assert.match(text, /invalid JSON/);
    assert.match(text, /celine\.mqtt\.acl\.rules\[\d+\]/);
    assert.match(text, /line \d+:\d+/);
    await expectVerdict(page, 'No decision');
    // Clicking the diagnostic puts the cursor where the text broke.
    await item.locator('button').click();
    const selected = await page.locator('#policy').evaluate((t) => t.value.slice(t.selectionStart, t.selectionEnd));
    assert.equal(selected, '"');
    assert.equal(await page.locator('#highlights mark.error').count() > 0, true);
    await page.context().close();
  });

  it('maps a pasted token to its subject, marked as not verified', async () => {
    const page = await open(browser, host.url);
    await page.getByLabel('Paste a token (JWT)', { exact: true }).check();
    const now = Math.floor(Date.now() / 1000);
    const token = fakeJwt({
      sub: '5b1c', azp: 'svc-pipelines', preferred_username: 'service-account-svc-pipelines',
      scope: 'profile email mqtt.write', exp: now + 300, iat: now,
    });
    await page.locator('#token').fill(token);
    const subject = JSON.parse(await page.locator('#token-subject').textContent());
    assert.deepEqual({ id: subject.id, type: subject.type }, { id: 'svc-pipelines', type: 'service' });
    assert.ok(subject.scopes.includes('mqtt.write'));
    assert.match(await page.locator('#token-info').textContent(), /signature not verified/);
    await page.getByLabel('Action', { exact: true }).selectOption('publish');
    await page.getByLabel('Topic', { exact: true }).fill('celine/pipelines/status/run-7');
    await expectVerdict(page, 'ALLOW');
    // A link never carries the token.
    await page.locator('#share').click();
    await page.waitForFunction(() => location.hash.startsWith('#state='));
    assert.ok(!page.url().includes(token.split('.')[1]));
    await page.locator('#token').fill('abc.def.ghi');
    assert.match(await page.locator('#token-info').textContent(), /not base64url|not JSON/);
    await expectVerdict(page, 'No decision');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  it('runs the test table, and imports and exports the policies/tests format', async () => {
    const page = await open(browser, host.url);
    const summary = page.locator('#tests-summary');
    await page.locator('#run-tests').click();
    assert.match(await summary.textContent(), new RegExp(`^${defaultCases.length} passed, 0 failed`));
    assert.equal(await page.locator('#cases tr.pass').count(), defaultCases.length);
    // Flip one expectation: that row fails.
    await page.locator('#cases tr').first().locator('select').selectOption(defaultCases[0].expect === 'allow' ? 'deny' : 'allow');
    assert.match(await summary.textContent(), /1 failed/);
    assert.equal(await page.locator('#cases tr.fail').count(), 1);
    // The current request becomes a passing case.
    await page.locator('#add-case').click();
    assert.equal(await page.locator('#cases tr').count(), defaultCases.length + 1);
    assert.equal(await page.locator('#cases tr').last().getAttribute('class'), 'pass');
    // Export, then import the exported file into a fresh page.
    const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#export-tests').click()]);
    const exported = join(ARTIFACTS, 'exported-tests.json');
    await download.saveAs(exported);
    const doc = JSON.parse(readFileSync(exported, 'utf8'));
    assert.equal(doc.cases.length, defaultCases.length + 1);
    const fresh = await open(browser, host.url);
    await fresh.locator('#import-file').setInputFiles(exported);
    await fresh.waitForFunction((n) => document.querySelectorAll('#cases tr').length === n, defaultCases.length + 1);
    assert.match(await fresh.locator('#tests-summary').textContent(), /1 failed/);
    // A file that is not in the format is refused with the reason.
    await fresh.locator('#import-file').setInputFiles({ name: 'bad.json', mimeType: 'application/json',
      buffer: Buffer.from('{"cases": [{"subject": {"id": "a", "type": "user"}, "action": "read", "topic": "a", "expect": "maybe"}]}') });
    await fresh.waitForFunction(() => !document.getElementById('banner').hidden);
    assert.match(await fresh.locator('#banner').textContent(), /bad\.json: cases\[0\]\.expect: /);
    assert.equal(await fresh.locator('#cases tr').count(), defaultCases.length + 1);
    await page.context().close();
    await fresh.context().close();
  });

  it('puts its state in the URL fragment, and a shared link restores it', async () => {
    const page = await open(browser, host.url);
    const edited = defaultPolicy.replace('celine/telemetry/+/+/readings', 'celine/telemetry/+/+/summaries');
    await setPolicy(page, edited);
    await page.getByLabel('Topic', { exact: true }).fill('celine/telemetry/meter/m-9/summaries');
    await expectVerdict(page, 'ALLOW');
    await page.locator('#share').click();
    await page.waitForFunction(() => location.hash.startsWith('#state='));
    const link = page.url();
    const other = await open(browser, link);
    assert.equal(await other.locator('#policy').inputValue(), edited);
    assert.equal(await other.getByLabel('Topic', { exact: true }).inputValue(), 'celine/telemetry/meter/m-9/summaries');
    await expectVerdict(other, 'ALLOW');
    const broken = await open(browser, `${host.url}#state=AAAA`);
    assert.match(await broken.locator('#banner').textContent(), /could not be read/);
    await expectVerdict(broken, 'ALLOW');
    for (const p of [page, other, broken]) await p.context().close();
  });

  it('decides the invariants as the policy is edited and loads a counterexample as the request', async () => {
    const page = await open(browser, host.url);
    await page.waitForFunction(() => Number(document.body.dataset.verifies || 0) >= 1);
    assert.match(await page.locator('#invariants-summary').textContent(), /^3 of 3 invariants hold for every request/);
    // Viewers may read every nudge: "each user its own nudges only" breaks.
    const wide = defaultPolicy.replace('"rules": [', `"rules": [
          { "id": "nudges-viewers", "subjects": { "groups": ["viewers"] }, "topics": ["celine/nudges/#"], "actions": ["subscribe", "read"] },`);
    const before = await page.evaluate(() => Number(document.body.dataset.verifies));
    await setPolicy(page, wide);
    await page.waitForFunction((n) => Number(document.body.dataset.verifies) > n, before);
    assert.match(await page.locator('#invariants-summary').textContent(), /^2 of 3 invariants hold/);
    const broken = page.locator('#invariants li.violated');
    assert.equal(await broken.count(), 1);
    assert.match(await broken.textContent(), /VIOLATED nudges-are-private/);
    assert.match(await broken.textContent(), /allowed by rule 'nudges-viewers'/);
    await broken.locator('button.counterexample').click();
    await expectVerdict(page, 'ALLOW');
    assert.match(await page.getByLabel('Topic', { exact: true }).inputValue(), /^celine\/nudges\//);
    assert.match(await page.getByLabel('Groups', { exact: true }).inputValue(), /viewers/);
    assert.equal(await page.locator('#decision-rule').textContent(), 'nudges-viewers');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  it('compares the edited policy with the default and loads a witness as the request', async () => {
    const page = await open(browser, host.url);
    await page.locator('#compare-run').click();
    await page.waitForFunction(() => Number(document.body.dataset.compares || 0) >= 1);
    assert.match(await page.locator('#compare-summary').textContent(), /^No decision changes/);
    // Viewers lose their telemetry: the change is listed, grouped by the rules on each side.
    const edited = defaultPolicy.replace('celine/telemetry/+/+/readings', 'celine/telemetry/+/+/summaries');
    const before = await page.evaluate(() => Number(document.body.dataset.compares));
    await setPolicy(page, edited);
    await page.waitForFunction((n) => Number(document.body.dataset.compares) > n, before);
    assert.match(await page.locator('#compare-summary').textContent(), /requests change decision/);
    const lost = page.locator('.change-group.lost h3', { hasText: "allowed by rule 'telemetry-viewers'" }).first();
    assert.match(await lost.textContent(), /^LOST: allowed by rule 'telemetry-viewers' → denied: no rule allows/);
    const gained = page.locator('.change-group.gained h3').first();
    assert.match(await gained.textContent(), /^GAINED: denied: no rule allows → allowed by rule 'telemetry-viewers'/);
    // A witness becomes the request: the form shows it and the edited policy decides it.
    const witness = lost.locator('xpath=..').locator('button.witness').first();
    const label = await witness.textContent();
    await witness.click();
    await expectVerdict(page, 'DENY');
    const topic = await page.getByLabel('Topic', { exact: true }).inputValue();
    assert.ok(label.includes(topic), `${label} vs ${topic}`);
    assert.match(topic, /celine\/telemetry\/[^/]+\/[^/]+\/readings$/); // a shared subscription from the cases, too
    assert.match(await page.getByLabel('Groups', { exact: true }).inputValue(), /viewers/);
    // A document to compare with that does not load says why.
    await page.locator('#compare-with summary').click();
    await page.locator('#compare-policy').fill('{"celine": {}}');
    await page.waitForFunction(() => /does not load/.test(document.getElementById('compare-summary').textContent));
    assert.match(await page.locator('#compare-errors').textContent(), /mqtt/);
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  it("shows the subject's effective permissions as a topic tree", async () => {
    const page = await open(browser, host.url);
    await expectVerdict(page, 'ALLOW');
    const subscribe = page.locator('.eff-action[data-action=subscribe]');
    assert.match(await subscribe.locator('.grant').first().textContent(),
      /^allow celine\/telemetry\/\+\/\+\/readings \(rule telemetry-viewers\)/);
    assert.match(await subscribe.locator('ul.tree').first().textContent(), /celine.*telemetry.*readings allow \(telemetry-viewers\)/s);
    assert.match(await page.locator('.eff-action[data-action=publish]').textContent(), /nothing: missing capability 'publish'/);
    assert.match(await page.locator('#effective-summary').textContent(), /^Superuser: no/);
    // The view follows the form: an admin may do everything.
    await page.getByLabel('Groups', { exact: true }).fill('admins');
    await page.waitForFunction(() => /^Superuser: yes/.test(document.getElementById('effective-summary').textContent));
    assert.match(await page.locator('.eff-action[data-action=publish] .grant').first().textContent(), /^allow # \(rule admins-all\)/);
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  it('is usable with the keyboard: labelled controls, and Tab leaves the editor', async () => {
    const page = await open(browser, host.url);
    await page.locator('#policy').focus();
    await page.keyboard.press('Tab');
    assert.notEqual(await page.evaluate(() => document.activeElement.id), 'policy');
    await page.getByLabel('Topic', { exact: true }).focus();
    await page.keyboard.press('Control+A');
    await page.keyboard.type('celine/system/alerts/critical');
    await expectVerdict(page, 'DENY');
    const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
      .filter((e) => e.type !== 'file' && e.type !== 'radio' && !e.labels?.length && !e.getAttribute('aria-label') && !e.textContent.trim())
      .map((e) => e.id || e.outerHTML));
    assert.deepEqual(unlabelled, []);
    await page.context().close();
  });
});

describe('the playground offline', () => {
  it('keeps working once loaded when the server is gone', async () => {
    const [host, browser] = await Promise.all([startHost(), launch()]);
    try {
      const page = await open(browser, host.url);
      await page.evaluate(() => navigator.serviceWorker.ready);
      // The worker controls the page after a reload; the reload also fills its cache.
      await page.reload();
      await page.waitForSelector('body[data-ready=true]');
      await page.waitForFunction(() => navigator.serviceWorker.controller !== null);
      await host.stop();
      await page.reload();
      await page.waitForSelector('body[data-ready=true]');
      await expectVerdict(page, 'ALLOW');
      await setPolicy(page, defaultPolicy.replace('celine/telemetry/+/+/readings', 'x/+'));
      await expectVerdict(page, 'DENY');
      await page.context().close();
    } finally {
      await browser.close();
      await host.stop();
    }
  });
});
