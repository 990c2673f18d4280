// The playground page. Every decision, diagnostic, subject and test result comes from
// policy-core (pkg/, built by wasm-bindgen from web-playground/); this file only moves values
// between the form and the engine and draws them.
import init, { Playground, decode_token, evaluate, version } from './pkg/web_playground.js';

const $ = (id) => document.getElementById(id);
const engine = { pg: null };
const state = {
  cases: [],          // test cases, in the policies/tests file format
  casesDescription: '',
  results: null,      // the last run's results, by row
  loaded: null,       // the last load's answer
  decision: null,     // the last check's answer
  compared: false,    // compare after every edit once the person asked for it
};

// ---------------------------------------------------------------- small helpers

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function list(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

function banner(message) {
  const b = $('banner');
  b.textContent = message || '';
  b.hidden = !message;
}

function call(fn, ...args) {
  return JSON.parse(fn(...args));
}

// ---------------------------------------------------------------- editor and diagnostics

function escapeHtml(s) {
  return s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]);
}

// Draws the backdrop: the same text, transparent, with marks where the places are.
function drawHighlights() {
  const text = $('policy').value;
  const marks = [];
  const d = state.decision;
  if (d && d.ok && d.place) {
    marks.push({ from: d.place.from, to: d.place.to, cls: d.decision.allow ? 'decided-allow' : 'decided-deny' });
    for (const p of d.patterns || []) {
      if (p.place && p.rule === d.decision.rule) marks.push({ from: p.place.from, to: p.place.to, cls: 'pattern' });
    }
  }
  for (const diag of (state.loaded && state.loaded.diagnostics) || []) {
    if (diag.place) marks.push({ from: diag.place.from, to: Math.max(diag.place.to, diag.place.from + 1), cls: diag.severity });
  }
  const cuts = new Set([0, text.length]);
  for (const m of marks) { cuts.add(Math.min(m.from, text.length)); cuts.add(Math.min(m.to, text.length)); }
  const points = [...cuts].sort((a, b) => a - b);
  let html = '';
  for (let i = 0; i + 1 < points.length; i++) {
    const [a, b] = [points[i], points[i + 1]];
    const piece = escapeHtml(text.slice(a, b));
    const cls = marks.filter((m) => m.from <= a && m.to >= b).map((m) => m.cls);
    html += cls.length ? `<mark class="${cls.join(' ')}">${piece}</mark>` : piece;
  }
  // A trailing newline needs a character after it to take up its line.
  $('highlights').innerHTML = html + ' ';
  syncScroll();
}

function syncScroll() {
  const t = $('policy');
  $('highlights').style.transform = `translate(${-t.scrollLeft}px, ${-t.scrollTop}px)`;
}

function select(place) {
  const t = $('policy');
  t.focus();
  t.setSelectionRange(place.from, place.to);
  // Scroll the selection into view: put its line a few lines from the top.
  const lineHeight = parseFloat(getComputedStyle(t).lineHeight) || 19;
  t.scrollTop = Math.max(0, (place.line - 4) * lineHeight);
  syncScroll();
}

function diagnosticItem(d) {
  const where = d.place ? `line ${d.place.line}:${d.place.column}` : '';
  const button = el('button', { type: 'button', title: d.place ? 'Show it in the editor' : null },
    el('strong', {}, d.severity), ' ',
    el('span', { class: 'path' }, d.path || '(document)'), where ? ` (${where})` : '', ': ', d.message);
  if (d.place) button.addEventListener('click', () => select(d.place));
  return el('li', { class: d.severity }, button);
}

function loadPolicy() {
  const text = $('policy').value;
  state.loaded = call((t) => engine.pg.load(t), text);
  const diags = state.loaded.diagnostics;
  const ul = $('diagnostics');
  ul.replaceChildren(...diags.map(diagnosticItem));
  const errors = diags.filter((d) => d.severity === 'error').length;
  const warnings = diags.length - errors;
  if (!diags.length) ul.append(el('li', { class: 'ok' }, `Loads: ${state.loaded.rules.length} rules, no warnings.`));
  $('diag-count').textContent = diags.length ? `(${errors} errors, ${warnings} warnings)` : '';
  check();
  runTests();
  verifyInvariants();
  if (state.compared) compare();
  // How many loads happened: lets a test wait for the one its edit caused.
  document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
}

// ---------------------------------------------------------------- request and decision

function tokenInfo() {
  const token = $('token').value.trim();
  if (!token) return { ok: false, error: 'paste a token' };
  return call(decode_token, token, Date.now() / 1000);
}

function drawToken(info) {
  const box = $('token-info');
  if (!$('token').value.trim()) { box.replaceChildren(); return; }
  if (!info.ok) { box.replaceChildren(el('p', { class: 'bad' }, info.error)); return; }
  const parts = [el('span', { class: 'badge' }, 'signature not verified'), ' '];
  parts.push(`alg ${info.header.alg ?? '?'}, kid ${info.header.kid ?? '(none)'}`);
  if (info.expired === true) parts.push(el('span', { class: 'bad' }, ' — expired (the service refuses it)'));
  if (info.expired === null) parts.push(el('span', { class: 'bad' }, ' — no exp claim (the service refuses it)'));
  const subject = info.subject
    ? el('p', {}, 'Subject: ', el('code', { id: 'token-subject' }, JSON.stringify(info.subject)))
    : el('p', { class: 'bad' }, `No subject: ${info.subject_error}`);
  box.replaceChildren(el('p', {}, ...parts), subject, el('details', {}, el('summary', {}, 'Claims'),
    el('pre', {}, JSON.stringify(info.claims, null, 2))));
}

function formSubject() {
  return {
    id: $('subject-id').value.trim(),
    type: $('subject-type').value,
    groups: list($('subject-groups').value),
    scopes: list($('subject-scopes').value),
  };
}

function tokenMode() {
  return $('mode-token').checked;
}

// The request in the `mqtt-policy eval` format, or an error for the form.
function currentRequest() {
  const r = { action: $('action').value, topic: $('topic').value, clientid: $('clientid').value, username: $('username').value };
  // The message, when it is set: rules with `qos` or `retain` read it (a subscription has no
  // retain flag, and the superuser question no message).
  $('retain').disabled = r.action === 'subscribe' || r.action === 'superuser';
  $('qos').disabled = r.action === 'superuser';
  if ($('qos').value !== '' && !$('qos').disabled) r.qos = Number($('qos').value);
  if ($('retain').value !== '' && !$('retain').disabled) r.retain = $('retain').value === 'true';
  if (tokenMode()) {
    const info = tokenInfo();
    drawToken(info);
    if (!info.ok) return { error: info.error };
    r.claims = info.claims;
  } else {
    r.subject = formSubject();
  }
  return { request: r };
}

function check() {
  const { request, error } = currentRequest();
  const box = $('decision');
  let answer;
  if (error) answer = { ok: false, error };
  else if (!state.loaded || !state.loaded.ok) answer = { ok: false, error: 'the policy does not load: see its diagnostics' };
  else answer = call((r) => engine.pg.check(r), JSON.stringify(request));
  state.decision = answer;
  $('show-rule').hidden = true;
  if (!answer.ok) {
    box.dataset.allow = '';
    box.dataset.error = 'true';
    $('decision-verdict').textContent = 'No decision';
    $('decision-reason').textContent = answer.error;
    $('capabilities').textContent = '';
    $('patterns').replaceChildren();
    $('trace').replaceChildren();
    drawHighlights();
    return;
  }
  const d = answer.decision;
  box.dataset.error = 'false';
  box.dataset.allow = String(d.allow);
  $('decision-verdict').textContent = d.allow ? 'ALLOW' : 'DENY';
  $('decision-reason').textContent = d.reason;
  $('decision-rule').textContent = d.rule || '';
  $('show-rule').hidden = !answer.place;
  $('capabilities').textContent = answer.capabilities
    ? `Capabilities from roles: ${answer.capabilities.length ? answer.capabilities.join(', ') : 'none'}`
    : 'This policy has no roles: no capability check.';
  const pats = answer.patterns.map((p) => el('li', { class: p.applies ? '' : 'na' },
    el('code', {}, p.pattern), ` ${p.relation} the topic — ${p.rule} (${p.effect})`,
    p.applies ? '' : ': its subjects, actions or message conditions do not fit this request'));
  $('patterns').replaceChildren(...(pats.length ? pats : [el('li', { class: 'na' }, answer.ask === 'superuser' ? 'not asked for superuser' : 'none')]));
  $('trace').replaceChildren(...answer.rules.map((t) => el('tr', {},
    el('td', {}, t.rule), el('td', {}, t.effect), el('td', {}, t.applies ? 'yes' : 'no'), el('td', {}, t.why_not || ''))));
  drawEffective(request);
  drawHighlights();
}

// ---------------------------------------------------------------- effective permissions

function treeList(nodes) {
  return el('ul', { class: 'tree' }, ...nodes.map((n) => {
    const marks = [];
    if (n.allow.length) marks.push(el('span', { class: 'allow' }, ` allow (${n.allow.join(', ')})`));
    if (n.deny.length) marks.push(el('span', { class: 'deny' }, ` deny (${n.deny.join(', ')})`));
    return el('li', {}, el('code', {}, n.level), ...marks, n.children.length ? treeList(n.children) : '');
  }));
}

function drawEffective(request) {
  const box = $('effective');
  const who = { clientid: request.clientid, username: request.username };
  if (request.subject) who.subject = request.subject; else who.claims = request.claims;
  const e = call((r) => engine.pg.effective(r), JSON.stringify(who));
  if (!e.ok) { $('effective-summary').textContent = e.error; box.replaceChildren(); return; }
  const su = e.superuser;
  $('effective-summary').textContent = (su.allow ? `Superuser: yes, ${su.reason}` : `Superuser: no: ${su.reason.replace(/^not a superuser: /, '')}`) +
    ' (go-auth skips ACL checks for superusers). Placeholders without a value in the form stay as written.';
  box.replaceChildren(...e.actions.map((a) => {
    const body = [];
    if (a.refused) body.push(el('p', { class: 'na' }, `nothing: ${a.refused}`));
    else if (!a.allow.length) body.push(el('p', { class: 'na' }, 'nothing: no rule allows it to this subject'));
    for (const g of a.allow) {
      body.push(el('p', { class: g.void ? 'grant void' : 'grant' }, 'allow ', el('code', {}, g.pattern), ` (rule ${g.rule})`,
        g.void ? ' — void: a deny rule covers all of it' : '',
        g.needs.length ? ` — when ${g.needs.join(' and ')} is usable` : '',
        g.only ? ` — only: ${g.only}` : '',
        ...g.except.map((c) => el('span', { class: 'except' }, ' except ', el('code', {}, c.pattern),
          c.only ? ` (rule ${c.rule}; only: ${c.only})` : ` (rule ${c.rule})`))));
    }
    if (a.tree.length) body.push(treeList(a.tree));
    return el('section', { class: 'eff-action', 'data-action': a.action }, el('h4', {}, a.action), ...body);
  }));
}

// ---------------------------------------------------------------- compare with another document

function describeWitness(r) {
  const s = r.subject;
  const who = `${s.type} ${s.id}${s.groups.length ? ` groups [${s.groups.join(', ')}]` : ''}${s.scopes.length ? ` scopes [${s.scopes.join(' ')}]` : ''}`;
  const message = [r.qos === undefined ? '' : `QoS ${r.qos}`, r.retain === undefined ? '' : (r.retain ? 'retained' : 'not retained')]
    .filter(Boolean).join(', ');
  if (r.action === 'superuser') return `superuser? ${who}`;
  return `${r.action} ${r.topic}${message ? ` (${message})` : ''} as ${who}`;
}

// Puts a request (an eval line with a subject) into the form and decides it.
function loadRequest(r) {
  $('mode-subject').checked = true;
  setMode();
  $('subject-type').value = r.subject.type;
  $('subject-id').value = r.subject.id;
  $('subject-groups').value = r.subject.groups.join(', ');
  $('subject-scopes').value = r.subject.scopes.join(' ');
  $('action').value = r.action;
  $('topic').value = r.topic ?? '';
  $('clientid').value = r.clientid ?? '';
  $('username').value = r.username ?? '';
  $('qos').value = r.qos === undefined ? '' : String(r.qos);
  $('retain').value = r.retain === undefined ? '' : String(r.retain);
  check();
  $('request').scrollIntoView();
}

function compare() {
  const summary = $('compare-summary');
  const groups = $('compare-groups');
  $('compare-errors').replaceChildren();
  groups.replaceChildren();
  summary.className = 'summary';
  if (!state.loaded || !state.loaded.ok) { summary.textContent = 'The edited policy does not load: nothing to compare.'; return; }
  const d = call((t, c) => engine.pg.diff(t, c), $('compare-policy').value, JSON.stringify({ cases: state.cases }));
  if (!d.ok) {
    summary.textContent = d.error;
    summary.className = 'summary fail';
    $('compare-errors').replaceChildren(...(d.errors || []).map((x) => el('li', { class: x.severity },
      el('strong', {}, x.severity), ' ', el('span', { class: 'path' }, x.path || '(document)'), `: ${x.message}`)));
    return;
  }
  if (!d.changes) {
    summary.textContent = `No decision changes (${d.probed} requests tried).`;
  } else {
    const counts = Object.entries(d.counts).map(([a, c]) => `${a}: ${c.gained} gained, ${c.lost} lost`).join('; ');
    summary.textContent = `${d.changes} requests change decision (${d.probed} tried). ${counts}`;
    summary.className = 'summary fail';
  }
  groups.replaceChildren(...d.groups.map((g) => el('div', { class: `change-group ${g.new.allow ? 'gained' : 'lost'}` },
    el('h3', {}, `${g.new.allow ? 'GAINED' : 'LOST'}: ${g.old_text} → ${g.new_text} (${g.count})`),
    el('ul', {}, ...g.changes.map((c) => el('li', {}, el('button', {
      type: 'button', class: 'witness', title: 'Load this request', onclick: () => loadRequest(c.request),
    }, describeWitness(c.request))))))));
  document.body.dataset.compares = String(Number(document.body.dataset.compares || 0) + 1);
}

// The document's invariants, decided for every request; a counterexample loads as the request.
function verifyInvariants() {
  const summary = $('invariants-summary');
  const list = $('invariants');
  list.replaceChildren();
  summary.className = 'summary';
  if (!state.loaded || !state.loaded.ok) {
    summary.textContent = 'The policy does not load: its invariants cannot be decided.';
  } else {
    const v = call(() => engine.pg.verify());
    if (!v.ok) {
      summary.textContent = v.error;
      summary.className = 'summary fail';
    } else if (!v.invariants.length) {
      summary.textContent = 'The policy states no invariants (celine.mqtt.invariants).';
    } else {
      const held = v.invariants.filter((i) => i.holds).length;
      summary.textContent = `${held} of ${v.invariants.length} invariants hold for every request (${v.probed} requests decided).`;
      summary.className = `summary ${v.holds ? 'pass' : 'fail'}`;
      list.replaceChildren(...v.invariants.map((i) => {
        const name = el('button', { type: 'button', title: i.place ? 'Show it in the editor' : null }, i.invariant);
        if (i.place) name.addEventListener('click', () => select(i.place));
        const mark = i.holds ? 'HOLDS' : i.undecided ? 'UNDECIDED' : 'VIOLATED';
        const item = el('li', { class: i.holds ? 'holds' : 'violated' },
          el('strong', {}, mark), ' ', name, el('div', { class: 'hint' }, i.statement));
        if (i.undecided) item.append(el('div', {}, `Could not be decided: ${i.undecided}`));
        const c = i.counterexample;
        if (c) {
          const why = c.superuser ? 'allowed: a superuser' : c.decision.rule ? `allowed by rule '${c.decision.rule}'` : 'allowed';
          item.append(el('div', {}, 'Counterexample (', why, '): ', el('button', {
            type: 'button', class: 'witness counterexample', title: 'Load this request',
            // A superuser is asked no ACL question: what allows it is the superuser question.
            onclick: () => loadRequest(c.superuser ? { ...c.request, action: 'superuser' } : c.request),
          }, describeWitness(c.request))));
        }
        return item;
      }));
    }
  }
  document.body.dataset.verifies = String(Number(document.body.dataset.verifies || 0) + 1);
}

function startComparing() {
  state.compared = true;
  compare();
}

// ---------------------------------------------------------------- test cases

function describeCase(c) {
  const who = c.subject ? `${c.subject.type}:${c.subject.id}` : c.claims ? 'claims' : '?';
  return `${who} ${c.action ?? '?'} ${c.topic ?? ''}`.trim();
}

function drawCases() {
  const rows = state.cases.map((c, i) => {
    const r = state.results && state.results[i];
    const expect = el('select', { 'aria-label': `Expected result of ${c.name || `case ${i + 1}`}` },
      el('option', { value: 'allow' }, 'allow'), el('option', { value: 'deny' }, 'deny'));
    expect.value = c.expect;
    expect.addEventListener('change', () => { c.expect = expect.value; runTests(); });
    const remove = el('button', { type: 'button', 'aria-label': `Remove ${c.name || `case ${i + 1}`}` }, '×');
    remove.addEventListener('click', () => { state.cases.splice(i, 1); runTests(); });
    const result = r ? (r.passed ? 'pass' : `fail: ${r.failure}`) : '';
    return el('tr', { class: r ? (r.passed ? 'pass' : 'fail') : '' },
      el('td', {}, c.name || `cases[${i}]`), el('td', { class: 'mono' }, describeCase(c)),
      el('td', {}, expect, c.expect_rule ? el('div', { class: 'hint' }, `rule ${c.expect_rule}`) : ''),
      el('td', { class: 'result' }, result), el('td', {}, remove));
  });
  $('cases').replaceChildren(...rows);
}

function runTests() {
  const summary = $('tests-summary');
  const errs = $('tests-errors');
  errs.replaceChildren();
  summary.className = 'summary';
  state.results = null;
  if (!state.cases.length) {
    summary.textContent = 'No test cases: add the current request, or import a file.';
  } else if (!state.loaded || !state.loaded.ok) {
    summary.textContent = 'The policy does not load: the cases cannot run.';
  } else {
    const r = call((t) => engine.pg.run_tests(t), JSON.stringify({ cases: state.cases }));
    if (!r.ok) {
      summary.textContent = r.error;
      summary.className = 'summary fail';
      errs.replaceChildren(...(r.errors || []).map(diagnosticItem));
    } else {
      state.results = r.results;
      summary.className = `summary ${r.failed ? 'fail' : 'pass'}`;
      summary.textContent = `${r.passed} passed, ${r.failed} failed` +
        (r.uncovered.length ? `; rules no case decides: ${r.uncovered.join(', ')}` : '; every rule decides some case');
    }
  }
  drawCases();
}

function addCase() {
  const { request, error } = currentRequest();
  const d = state.decision;
  if (error || !d || !d.ok) { banner(`Cannot add this request: ${error || (d && d.error) || 'no decision'}`); return; }
  banner('');
  const c = { name: `${request.action} ${request.topic}`.trim(), ...request, expect: d.decision.allow ? 'allow' : 'deny' };
  if (c.claims) { delete c.claims; c.subject = d.subject; } // a case keeps the subject, not the token's claims
  if (d.decision.rule) c.expect_rule = d.decision.rule;
  if (!c.clientid) delete c.clientid;
  if (!c.username) delete c.username;
  state.cases.push(c);
  runTests();
}

function importCases(text, source) {
  let doc;
  try { doc = JSON.parse(text); } catch (e) { banner(`${source}: not JSON: ${e.message}`); return false; }
  if (!doc || !Array.isArray(doc.cases)) { banner(`${source}: expected an object with a "cases" list (the policies/tests format)`); return false; }
  const r = call((t) => engine.pg.run_tests(t), text);
  if (!r.ok && r.errors) {
    banner(`${source}: ${r.errors.map((d) => `${d.path}: ${d.message}`).join('; ')}`);
    return false;
  }
  banner('');
  state.cases = doc.cases;
  state.casesDescription = doc.description || '';
  runTests();
  return true;
}

function exportCases() {
  const doc = { description: state.casesDescription || 'Exported from the CELINE MQTT policy playground', cases: state.cases };
  const blob = new Blob([JSON.stringify(doc, null, 2) + '\n'], { type: 'application/json' });
  const a = el('a', { href: URL.createObjectURL(blob), download: 'policy-tests.json' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ---------------------------------------------------------------- shareable state

function b64url(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function unb64url(s) {
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

async function pipe(bytes, stream) {
  return new Uint8Array(await new Response(new Blob([bytes]).stream().pipeThrough(stream)).arrayBuffer());
}

function snapshot() {
  // A token never goes into a link: the subject it maps to does.
  let subject = formSubject();
  if (tokenMode() && state.decision && state.decision.subject) subject = state.decision.subject;
  return {
    v: 1, policy: $('policy').value, subject, action: $('action').value, topic: $('topic').value,
    clientid: $('clientid').value, username: $('username').value, qos: $('qos').value, retain: $('retain').value,
    tests: { description: state.casesDescription, cases: state.cases },
  };
}

async function share() {
  const packed = await pipe(new TextEncoder().encode(JSON.stringify(snapshot())), new CompressionStream('deflate-raw'));
  const url = new URL(location.href);
  url.hash = `state=${b64url(packed)}`;
  history.replaceState(null, '', url);
  let copied = false;
  try { await navigator.clipboard.writeText(url.href); copied = true; } catch { /* not allowed here */ }
  $('share-status').textContent = copied ? 'Link copied.' : 'The address bar now holds the link.';
}

async function restore(hash) {
  const m = /^#state=([A-Za-z0-9_-]+)$/.exec(hash);
  if (!m) return null;
  const bytes = await pipe(unb64url(m[1]), new DecompressionStream('deflate-raw'));
  const s = JSON.parse(new TextDecoder().decode(bytes));
  if (s.v !== 1 || typeof s.policy !== 'string') throw new Error('unknown state format');
  return s;
}

function apply(s) {
  $('policy').value = s.policy;
  $('mode-subject').checked = true;
  setMode();
  const subj = s.subject || {};
  $('subject-type').value = ['service', 'device'].includes(subj.type) ? subj.type : 'user';
  $('subject-id').value = subj.id || '';
  $('subject-groups').value = (subj.groups || []).join(', ');
  $('subject-scopes').value = (subj.scopes || []).join(' ');
  for (const k of ['action', 'topic', 'clientid', 'username']) if (typeof s[k] === 'string') $(k).value = s[k];
  for (const k of ['qos', 'retain']) $(k).value = typeof s[k] === 'string' ? s[k] : '';
  state.cases = (s.tests && Array.isArray(s.tests.cases)) ? s.tests.cases : [];
  state.casesDescription = (s.tests && s.tests.description) || '';
}

// ---------------------------------------------------------------- start

function setMode() {
  $('subject-form').hidden = tokenMode();
  $('token-form').hidden = !tokenMode();
}

async function fetchText(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.text();
}

const defaults = {
  subject: { id: 'u1', type: 'user', groups: ['viewers'], scopes: [] },
  action: 'subscribe', topic: 'celine/telemetry/meter/meter-001/readings', clientid: 'dashboard-1', username: 'u1',
};

async function loadDefaults() {
  const [policy, tests] = await Promise.all([fetchText('default-policy.json'), fetchText('default-tests.json')]);
  const t = JSON.parse(tests);
  apply({ v: 1, policy, ...defaults, tests: t });
}

async function main() {
  await init();
  engine.pg = new Playground();
  $('core-version').textContent = `v${version()}`;
  try {
    const shared = await restore(location.hash);
    if (shared) apply(shared); else await loadDefaults();
  } catch (e) {
    banner(`The link's state could not be read (${e.message}); showing the defaults.`);
    await loadDefaults();
  }

  const reloadSoon = debounce(loadPolicy, 120);
  $('policy').addEventListener('input', () => { drawHighlights(); reloadSoon(); });
  $('policy').addEventListener('scroll', syncScroll);
  for (const id of ['subject-type', 'subject-id', 'subject-groups', 'subject-scopes', 'action', 'topic', 'clientid', 'username', 'qos', 'retain', 'token']) {
    $(id).addEventListener('input', check);
  }
  for (const r of document.querySelectorAll('input[name=mode]')) r.addEventListener('change', () => { setMode(); check(); });
  $('show-rule').addEventListener('click', () => state.decision && state.decision.place && select(state.decision.place));
  $('format').addEventListener('click', () => {
    try { $('policy').value = JSON.stringify(JSON.parse($('policy').value), null, 2) + '\n'; loadPolicy(); }
    catch { banner('Format needs valid JSON: see the diagnostics.'); }
  });
  $('reset-policy').addEventListener('click', async () => { $('policy').value = await fetchText('default-policy.json'); loadPolicy(); });
  $('add-case').addEventListener('click', addCase);
  $('run-tests').addEventListener('click', runTests);
  $('export-tests').addEventListener('click', exportCases);
  $('reset-tests').addEventListener('click', async () => importCases(await fetchText('default-tests.json'), 'default cases'));
  $('import-file').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    if (f) importCases(await f.text(), f.name);
    e.target.value = '';
  });
  $('compare-run').addEventListener('click', startComparing);
  $('compare-default').addEventListener('click', async () => {
    $('compare-policy').value = await fetchText('default-policy.json');
    $('compare-source').textContent = 'the default policy';
    startComparing();
  });
  $('compare-file').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    if (f) { $('compare-policy').value = await f.text(); $('compare-source').textContent = f.name; startComparing(); }
    e.target.value = '';
  });
  $('compare-policy').addEventListener('input', debounce(() => {
    $('compare-source').textContent = 'the pasted document';
    if (state.compared) compare();
  }, 200));
  $('share').addEventListener('click', () => share().catch((e) => banner(`Could not make a link: ${e.message}`)));
  window.addEventListener('hashchange', async () => {
    try { const s = await restore(location.hash); if (s) { apply(s); loadPolicy(); } }
    catch (e) { banner(`The link's state could not be read (${e.message}).`); }
  });

  $('compare-policy').value = await fetchText('default-policy.json');
  loadPolicy();
  // For the browser tests and for people at the console: the engine itself.
  window.playground = { evaluate: (policy, request) => call(evaluate, policy, request), importCases };
  document.body.dataset.ready = 'true';

  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('sw.js').catch((e) => console.warn(`offline use unavailable: ${e.message}`));
  }
}

main().catch((e) => {
  banner(`The playground could not start: ${e.message}`);
  console.error(e);
});
