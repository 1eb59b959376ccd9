#!/usr/bin/env node
// End-to-end self test of provider.mjs, as a browserless cookie-jar client.
//
//   node selftest.mjs            spawn provider.mjs (PORT=0, three clients: RS256,
//                                ES256, HS256 ID tokens, a back-channel logout
//                                receiver, ACCESS_TOKEN_TTL=2) and test everything,
//                                including SIGTERM / stdin-EOF shutdown
//   node selftest.mjs ISSUER     test an already running provider (default client
//                                CLIENT_ID/CLIENT_SECRET env, default portcullis /
//                                portcullis-secret; users alice/bob defaults)
//
// Exits 0 when every check passes, 1 otherwise; prints "N passed, N failed".

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
let passed = 0;
let failed = 0;

function check(cond, what, extra) {
  if (cond) {
    passed += 1;
    process.stdout.write(`ok   - ${what}\n`);
  } else {
    failed += 1;
    process.stdout.write(`FAIL - ${what}${extra !== undefined ? ` :: ${typeof extra === 'string' ? extra : JSON.stringify(extra)}` : ''}\n`);
  }
  return cond;
}

function must(cond, what, extra) {
  if (!check(cond, what, extra)) throw new Error(`fatal: ${what}`);
}

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });
const b64u = (b) => Buffer.from(b).toString('base64url');

// ---------------------------------------------------------------- cookie jar
class Jar {
  constructor() { this.cookies = new Map(); }

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let cpath = '/';
      let expired = value === '';
      for (const a of attrs) {
        const [k, v] = a.split('=');
        if (k.toLowerCase() === 'path') cpath = v;
        if (k.toLowerCase() === 'expires' && Date.parse(v) < Date.now()) expired = true;
        if (k.toLowerCase() === 'max-age' && Number(v) <= 0) expired = true;
      }
      const key = `${name};${cpath}`;
      if (expired) this.cookies.delete(key);
      else this.cookies.set(key, { name, value, path: cpath });
    }
  }

  header(url) {
    const p = new URL(url).pathname;
    return [...this.cookies.values()]
      .filter((c) => p === c.path || p.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
      .map((c) => `${c.name}=${c.value}`).join('; ');
  }
}

async function req(jar, url, { method = 'GET', form, headers = {}, json } = {}) {
  const h = { ...headers };
  const cookie = jar?.header(url);
  if (cookie) h.cookie = cookie;
  let body;
  if (form) {
    h['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  } else if (json) {
    h['content-type'] = 'application/json';
    body = JSON.stringify(json);
  }
  const res = await fetch(url, { method, headers: h, body, redirect: 'manual' });
  jar?.store(res);
  const text = await res.text();
  let data;
  try { data = JSON.parse(text); } catch { data = undefined; }
  return { status: res.status, location: res.headers.get('location'), text, json: data, headers: res.headers };
}

// ---------------------------------------------------------------- JWT helpers
function decodeJwt(jwt) {
  const [h, p] = jwt.split('.');
  return { header: JSON.parse(Buffer.from(h, 'base64url')), payload: JSON.parse(Buffer.from(p, 'base64url')) };
}

function verifyJwt(jwt, jwks, secret) {
  const [h, p, s] = jwt.split('.');
  const { header } = decodeJwt(jwt);
  const data = Buffer.from(`${h}.${p}`);
  const sig = Buffer.from(s, 'base64url');
  if (header.alg === 'HS256') {
    const mac = crypto.createHmac('sha256', secret).update(data).digest();
    return mac.length === sig.length && crypto.timingSafeEqual(mac, sig);
  }
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  if (!jwk) return false;
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  if (header.alg === 'RS256') return crypto.verify('sha256', data, key, sig);
  if (header.alg === 'ES256') return crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
  return false;
}

// ---------------------------------------------------------------- the flow
const abs = (base, loc) => new URL(loc, base).href;

// Browserless login: authorize -> interaction -> POST form -> ... -> redirect_uri.
async function login(jar, disco, { clientId, redirectUri, user, password, scope, extra = {} }) {
  const verifier = b64u(crypto.randomBytes(32));
  const challenge = b64u(crypto.createHash('sha256').update(verifier).digest());
  const state = b64u(crypto.randomBytes(12));
  const nonce = b64u(crypto.randomBytes(12));
  const authUrl = new URL(disco.authorization_endpoint);
  Object.entries({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: redirectUri,
    scope,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...extra,
  }).forEach(([k, v]) => authUrl.searchParams.set(k, v));

  const trace = [];
  let url = authUrl.href;
  let r = await req(jar, url);
  trace.push(`GET ${new URL(url).pathname} ${r.status}`);
  for (let hops = 0; hops < 12; hops += 1) {
    if (r.status === 302 || r.status === 303) {
      const next = abs(url, r.location);
      if (next.startsWith(redirectUri)) {
        return {
          callback: new URL(next), verifier, state, nonce, trace,
        };
      }
      url = next;
      r = await req(jar, url);
      trace.push(`GET ${new URL(url).pathname} ${r.status}`);
    } else if (r.status === 200 && /name="password"/.test(r.text)) {
      const action = abs(url, /<form[^>]*action="([^"]+)"/.exec(r.text)[1].replace(/&amp;/g, '&'));
      url = action;
      r = await req(jar, action, { method: 'POST', form: { login: user, password } });
      trace.push(`POST ${new URL(action).pathname} ${r.status}`);
      if (r.status === 401) return { failedLogin: true, trace, status: r.status };
    } else if (r.status === 200 && /<form[^>]*method="post"/.test(r.text)) {
      // auto-submit form (e.g. switching user inside one cookie jar)
      const action = abs(url, /<form[^>]*action="([^"]+)"/.exec(r.text)[1].replace(/&amp;/g, '&'));
      const fields = Object.fromEntries([...r.text.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"/g)].map((m) => [m[1], m[2]]));
      url = action;
      r = await req(jar, action, { method: 'POST', form: fields });
      trace.push(`POST ${new URL(action).pathname} ${r.status}`);
    } else {
      return { error: r, trace };
    }
  }
  return { error: 'too many hops', trace };
}

function basic(id, secret) {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

async function tokenRequest(disco, form, { clientId, secret, post = false }) {
  if (post) return req(null, disco.token_endpoint, { method: 'POST', form: { ...form, client_id: clientId, client_secret: secret } });
  return req(null, disco.token_endpoint, { method: 'POST', form, headers: { authorization: basic(clientId, secret) } });
}

// ---------------------------------------------------------------- provider process
function startProvider(envExtra) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(here, 'provider.mjs')], {
      env: { ...process.env, PORT: '0', ...envExtra },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stderr.on('data', (d) => { err += d; if (process.env.SELFTEST_VERBOSE) process.stderr.write(d); });
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl !== -1 && !child.ready) {
        child.ready = JSON.parse(out.slice(0, nl));
        resolve(child);
      }
    });
    child.getStdout = () => out;
    child.getStderr = () => err;
    child.on('exit', (code) => { if (!child.ready) reject(new Error(`provider exited ${code}: ${err}`)); });
  });
}

const waitExit = (child, ms) => new Promise((resolve) => {
  if (child.exitCode !== null) { resolve(child.exitCode); return; }
  const t = setTimeout(() => resolve('timeout'), ms);
  child.once('exit', (code, sig) => { clearTimeout(t); resolve(code ?? sig); });
});

// ---------------------------------------------------------------- main
async function main() {
  const attachIssuer = process.argv[2];
  let child;
  let issuer;
  const bclReceived = [];
  let bclServer;
  const redirectUri = 'http://app.localtest:12345/.portcullis/callback';
  const postLogoutUri = 'http://app.localtest:12345/.portcullis/logged-out';
  const clientId = process.env.CLIENT_ID || 'portcullis';
  const secret = process.env.CLIENT_SECRET || 'portcullis-secret';

  if (!attachIssuer) {
    bclServer = http.createServer((rq, rs) => {
      let b = '';
      rq.on('data', (d) => { b += d; });
      rq.on('end', () => {
        bclReceived.push({ path: rq.url, body: Object.fromEntries(new URLSearchParams(b)), ct: rq.headers['content-type'] });
        rs.writeHead(200);
        rs.end();
      });
    });
    await new Promise((r) => { bclServer.listen(0, '127.0.0.1', r); });
    const bclPort = bclServer.address().port;
    child = await startProvider({
      ACCESS_TOKEN_TTL: '2',
      CLIENTS: JSON.stringify([
        {
          client_id: clientId,
          client_secret: secret,
          redirect_uris: ['http://app.localtest:*/.portcullis/callback'],
          post_logout_redirect_uris: ['http://app.localtest:*/.portcullis/logged-out'],
          backchannel_logout_uri: `http://127.0.0.1:${bclPort}/.portcullis/backchannel-logout`,
        },
        {
          client_id: 'es-client', client_secret: 'es-secret', redirect_uris: ['*'], id_token_signed_response_alg: 'ES256',
        },
        {
          client_id: 'hs-client', client_secret: 'hs-secret-0123456789abcdef0123456789', redirect_uris: [redirectUri], id_token_signed_response_alg: 'HS256', token_endpoint_auth_method: 'client_secret_post',
        },
      ]),
    });
    issuer = child.ready.issuer;
    check(child.ready.ready === true && Number.isInteger(child.ready.port) && child.ready.port > 0, 'ready line has ready + port', child.ready);
    check(issuer === `http://127.0.0.1:${child.ready.port}/application/o/portcullis/`, 'issuer shape', issuer);
  } else {
    issuer = attachIssuer;
  }
  const origin = new URL(issuer).origin;

  try {
    // ---------------------------------------------------- discovery
    const d = await req(null, `${issuer}.well-known/openid-configuration`);
    must(d.status === 200, 'discovery 200', d.status);
    const disco = d.json;
    check(disco.issuer === issuer, 'discovery issuer exact (trailing slash)', disco.issuer);
    for (const k of ['authorization_endpoint', 'token_endpoint', 'userinfo_endpoint', 'jwks_uri', 'end_session_endpoint']) {
      check(typeof disco[k] === 'string' && disco[k].startsWith(issuer), `${k} under issuer prefix`, disco[k]);
    }
    check(disco.code_challenge_methods_supported?.includes('S256'), 'PKCE S256 advertised');
    check(['client_secret_basic', 'client_secret_post'].every((m) => disco.token_endpoint_auth_methods_supported.includes(m)), 'basic+post auth advertised');
    check(disco.backchannel_logout_supported === true, 'backchannel logout advertised');
    const jw = await req(null, disco.jwks_uri);
    check(jw.status === 200 && jw.json.keys.length >= 1 && jw.json.keys.every((k) => !k.d), 'jwks_uri fetchable, public keys only', jw.status);
    const jwks = jw.json;
    check((await req(null, disco.authorization_endpoint)).status === 400, 'authorization_endpoint reachable (400 without params)');
    check((await req(null, disco.token_endpoint, { method: 'POST', form: {} })).status === 400, 'token_endpoint reachable (400 without params)');
    check((await req(null, disco.userinfo_endpoint)).status === 401, 'userinfo_endpoint reachable (401 without token)');
    check((await req(null, disco.end_session_endpoint)).status === 200, 'end_session_endpoint reachable');
    check((await req(null, `${origin}/.well-known/openid-configuration`)).status === 404, 'nothing outside the prefix');

    await req(null, `${origin}/_test/stats/reset`, { method: 'POST' });

    // ---------------------------------------------------- bad password
    const jarBad = new Jar();
    const bad = await login(jarBad, disco, {
      clientId, redirectUri, user: 'alice', password: 'wrong', scope: 'openid',
    });
    check(bad.failedLogin === true, 'wrong password -> 401 login form', bad.trace);

    // ---------------------------------------------------- code flow (alice)
    const jar = new Jar();
    const scope = 'openid email profile offline_access';
    const lg = await login(jar, disco, {
      clientId, redirectUri, user: 'alice', password: 'alice-pw', scope,
    });
    must(lg.callback, 'login reaches redirect_uri', lg.error ? { status: lg.error.status, body: lg.error.text?.slice(0, 300), trace: lg.trace } : lg);
    process.stdout.write(`     sequence: ${lg.trace.join(' -> ')}\n`);
    check(lg.callback.searchParams.get('state') === lg.state, 'state echoed');
    check(lg.callback.searchParams.get('iss') === issuer, 'iss (RFC 9207) in callback', lg.callback.searchParams.get('iss'));
    const code = lg.callback.searchParams.get('code');
    must(code, 'code in callback');

    const tr = await tokenRequest(disco, {
      grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: lg.verifier,
    }, { clientId, secret });
    must(tr.status === 200, 'code -> tokens (client_secret_basic)', tr.json);
    const tok = tr.json;
    check(tok.token_type === 'Bearer' && tok.access_token && tok.refresh_token && tok.id_token, 'access+refresh+id token issued', tok);
    const idt = decodeJwt(tok.id_token);
    check(idt.header.alg === 'RS256' && verifyJwt(tok.id_token, jwks), 'id_token RS256 verifies against jwks', idt.header);
    const c = idt.payload;
    check(c.iss === issuer && c.iss.endsWith('/'), 'id_token iss with trailing slash', c.iss);
    check(c.aud === clientId, 'id_token aud', c.aud);
    check(c.nonce === lg.nonce, 'id_token nonce');
    check(JSON.stringify(c.groups) === '["admins","users"]', 'id_token groups', c.groups);
    check(c.email === 'alice@example.com' && c.email_verified === true && c.name === 'Alice Admin' && c.preferred_username === 'alice', 'id_token email/name/preferred_username', c);
    check(/^[0-9a-f]{64}$/.test(c.sub) && typeof c.sid === 'string', 'id_token sub (stable hex) + sid', c);
    check(c.exp - c.iat === 300, 'id_token ttl default 300s', c.exp - c.iat);

    const ui = await req(null, disco.userinfo_endpoint, { headers: { authorization: `Bearer ${tok.access_token}` } });
    check(ui.status === 200 && ui.json.sub === c.sub && ui.json.email === 'alice@example.com' && ui.json.groups?.length === 2 && ui.json.preferred_username === 'alice', 'userinfo claims', ui.json);

    // ---------------------------------------------------- refresh
    if (child) {
      await sleep(2600);
      const expired = await req(null, disco.userinfo_endpoint, { headers: { authorization: `Bearer ${tok.access_token}` } });
      check(expired.status === 401, 'access token expired after ACCESS_TOKEN_TTL=2', expired.status);
    }
    const rf = await tokenRequest(disco, { grant_type: 'refresh_token', refresh_token: tok.refresh_token }, { clientId, secret, post: true });
    check(rf.status === 200 && rf.json.access_token && rf.json.id_token, 'refresh_token grant (client_secret_post)', rf.json);
    check(rf.json.refresh_token === tok.refresh_token && rf.json.expires_in === (child ? 2 : 300), 'refresh response repeats the same refresh_token (no rotation), expires_in', rf.json);
    const rfId = decodeJwt(rf.json.id_token).payload;
    check(rfId.sub === c.sub && rfId.iss === issuer && rfId.groups?.length === 2, 'refreshed id_token claims');
    const ui2 = await req(null, disco.userinfo_endpoint, { headers: { authorization: `Bearer ${rf.json.access_token}` } });
    check(ui2.status === 200, 'userinfo with refreshed access token', ui2.status);

    let st = (await req(null, `${origin}/_test/stats`)).json;
    check(st.authorization_code === 1 && st.refresh_token === 1, 'stats: 1 code call, 1 refresh', st);
    check(st.token_errors.authorization_code === undefined && st.logins === 1 && st.login_failures === 1, 'stats: no errors, 1 login, 1 failure', st);

    // ---------------------------------------------------- SSO: second authorize, no login
    const sso = await login(jar, disco, {
      clientId, redirectUri: redirectUri.replace('12345', '23456'), user: 'x', password: 'x', scope: 'openid email',
    });
    check(sso.callback && !sso.trace.some((t) => t.startsWith('POST')), 'existing session: authorize redirects without login (glob redirect_uri)', sso.trace);

    // existing session + offline_access: a consent interaction is auto-completed (no form)
    const sso2 = await login(jar, disco, {
      clientId, redirectUri, user: 'x', password: 'x', scope,
    });
    if (check(sso2.callback && !sso2.trace.some((t) => t.startsWith('POST')), 'existing session + offline_access: no login form', sso2.trace)) {
      process.stdout.write(`     sequence: ${sso2.trace.join(' -> ')}\n`);
      const t = await tokenRequest(disco, {
        grant_type: 'authorization_code', code: sso2.callback.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: sso2.verifier,
      }, { clientId, secret });
      check(t.status === 200 && t.json.refresh_token, 'existing session + offline_access -> refresh_token', t.json);
    }
    // switching user inside one cookie jar (prompt=login as bob over alice's session)
    const jarSwitch = new Jar();
    await login(jarSwitch, disco, {
      clientId, redirectUri, user: 'alice', password: 'alice-pw', scope: 'openid',
    });
    const sw = await login(jarSwitch, disco, {
      clientId, redirectUri, user: 'bob', password: 'bob-pw', scope: 'openid profile', extra: { prompt: 'login' },
    });
    if (check(sw.callback, 'switch user in same jar', sw.trace)) {
      process.stdout.write(`     sequence: ${sw.trace.join(' -> ')}\n`);
      const t = await tokenRequest(disco, {
        grant_type: 'authorization_code', code: sw.callback.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: sw.verifier,
      }, { clientId, secret });
      check(t.status === 200 && decodeJwt(t.json.id_token).payload.preferred_username === 'bob', 'switched user is bob', t.json);
    }
    // prompt=login with offline_access still yields a refresh token
    const jar2 = new Jar();
    const pl = await login(jar2, disco, {
      clientId, redirectUri, user: 'bob', password: 'bob-pw', scope, extra: { prompt: 'login' },
    });
    if (check(pl.callback, 'prompt=login flow', pl.trace)) {
      const t2 = await tokenRequest(disco, {
        grant_type: 'authorization_code', code: pl.callback.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: pl.verifier,
      }, { clientId, secret });
      check(t2.status === 200 && t2.json.refresh_token, 'prompt=login + offline_access -> refresh_token', t2.json);
      const b = decodeJwt(t2.json.id_token).payload;
      check(b.preferred_username === 'bob' && JSON.stringify(b.groups) === '["users"]' && b.email === 'bob@example.org', 'bob claims', b);
    }
    // no offline_access -> no refresh token
    const jar3 = new Jar();
    const no = await login(jar3, disco, {
      clientId, redirectUri, user: 'bob', password: 'bob-pw', scope: 'openid profile',
    });
    if (check(no.callback, 'flow without offline_access', no.trace)) {
      const t3 = await tokenRequest(disco, {
        grant_type: 'authorization_code', code: no.callback.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: no.verifier,
      }, { clientId, secret });
      check(t3.status === 200 && !t3.json.refresh_token, 'no offline_access -> no refresh_token', t3.json);
      const p3 = decodeJwt(t3.json.id_token).payload;
      check(p3.groups && p3.email === undefined, 'profile scope releases groups, not email', p3);
      const replay = await tokenRequest(disco, {
        grant_type: 'authorization_code', code: no.callback.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: no.verifier,
      }, { clientId, secret });
      check(replay.status === 400 && replay.json.error === 'invalid_grant', 'code replay rejected', replay.json);
      const wrongVerifier = await login(jar3, disco, {
        clientId, redirectUri, user: 'bob', password: 'bob-pw', scope: 'openid',
      });
      const wv = await tokenRequest(disco, {
        grant_type: 'authorization_code', code: wrongVerifier.callback.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: lg.verifier,
      }, { clientId, secret });
      check(wv.status === 400 && wv.json.error === 'invalid_grant', 'PKCE verifier mismatch rejected', wv.json);
    }
    // redirect_uri not allowed (the spawned config uses a glob; attach mode may allow '*')
    if (child) {
      const badRedir = await req(new Jar(), `${disco.authorization_endpoint}?response_type=code&client_id=${clientId}&scope=openid&redirect_uri=${encodeURIComponent('http://evil.example/cb')}`);
      check(badRedir.status === 400 && /redirect_uri/.test(badRedir.text), 'unregistered redirect_uri rejected', badRedir.status);
    }

    // ---------------------------------------------------- bearer: client_credentials + mint
    const cc = await tokenRequest(disco, { grant_type: 'client_credentials' }, { clientId, secret });
    if (check(cc.status === 200 && cc.json.access_token.split('.').length === 3, 'client_credentials -> JWT access token', cc.json)) {
      const at = decodeJwt(cc.json.access_token);
      check(verifyJwt(cc.json.access_token, jwks) && at.payload.iss === issuer && at.payload.aud === clientId && at.payload.client_id === clientId, 'cc JWT: signature, iss, aud=client_id', at);
    }
    const mint = await req(null, `${origin}/_test/mint`, { method: 'POST', json: { user: 'bob' } });
    if (check(mint.status === 200, 'mint 200', mint.json)) {
      const m = decodeJwt(mint.json.access_token);
      check(verifyJwt(mint.json.access_token, jwks) && m.payload.iss === issuer && m.payload.aud === clientId && m.payload.preferred_username === 'bob' && m.payload.exp - m.payload.iat === (child ? 2 : m.payload.exp - m.payload.iat), 'minted JWT verifies, iss/aud/claims', m);
    }
    const foreign = await req(null, `${origin}/_test/mint`, { method: 'POST', json: { foreign_key: true, claims: { exp: 1 } } });
    check(foreign.status === 200 && !verifyJwt(foreign.json.access_token, jwks) && foreign.json.claims.exp === 1, 'mint with foreign key + overridden exp');

    // ---------------------------------------------------- ES256 / HS256 clients
    if (child) {
      const esJar = new Jar();
      const es = await login(esJar, disco, {
        clientId: 'es-client', redirectUri, user: 'alice', password: 'alice-pw', scope: 'openid',
      });
      const ets = await tokenRequest(disco, {
        grant_type: 'authorization_code', code: es.callback?.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: es.verifier,
      }, { clientId: 'es-client', secret: 'es-secret' });
      const jwks2 = (await req(null, disco.jwks_uri)).json;
      check(ets.status === 200 && decodeJwt(ets.json.id_token).header.alg === 'ES256' && verifyJwt(ets.json.id_token, jwks2), 'ES256 id_token client', ets.json);
      const hsJar = new Jar();
      const hs = await login(hsJar, disco, {
        clientId: 'hs-client', redirectUri, user: 'alice', password: 'alice-pw', scope: 'openid groups',
      });
      const hts = await tokenRequest(disco, {
        grant_type: 'authorization_code', code: hs.callback?.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: hs.verifier,
      }, { clientId: 'hs-client', secret: 'hs-secret-0123456789abcdef0123456789', post: true });
      check(hts.status === 200 && decodeJwt(hts.json.id_token).header.alg === 'HS256' && verifyJwt(hts.json.id_token, jwks, 'hs-secret-0123456789abcdef0123456789'), 'HS256 id_token client (signed with client_secret)', hts.json);
      check(decodeJwt(hts.json.id_token).payload.groups?.length === 2, 'groups scope releases groups');
    }

    // ---------------------------------------------------- RP-initiated logout (+ back-channel)
    check(bclReceived.length === (child ? 1 : 0), 'user switch logged the old session out (1 back-channel logout)', bclReceived.length);
    bclReceived.length = 0;
    await req(null, `${origin}/_test/stats/reset`, { method: 'POST' });
    const es = new URL(disco.end_session_endpoint);
    es.searchParams.set('id_token_hint', tok.id_token);
    es.searchParams.set('post_logout_redirect_uri', postLogoutUri);
    es.searchParams.set('state', 'bye');
    const lo1 = await req(jar, es.href);
    check(lo1.status === 200 && /name="xsrf"/.test(lo1.text), 'end_session GET -> 200 confirm form', lo1.status);
    const action = /<form[^>]*action="([^"]+)"/.exec(lo1.text)?.[1];
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(lo1.text)?.[1];
    check(action === `${issuer}session/end/confirm`, 'confirm action under prefix', action);
    const lo2 = await req(jar, action, { method: 'POST', form: { xsrf, logout: 'yes' } });
    check(lo2.status === 303 && lo2.location === `${postLogoutUri}?state=bye`, 'confirm POST -> 303 post_logout_redirect_uri?state', { status: lo2.status, location: lo2.location });
    if (child) {
      check(bclReceived.length === 1, 'back-channel logout delivered on end_session', bclReceived.length);
      if (bclReceived[0]) {
        const lt = bclReceived[0].body.logout_token;
        const ltp = decodeJwt(lt).payload;
        check(verifyJwt(lt, jwks) && ltp.iss === issuer && ltp.aud === clientId && ltp.sid === c.sid && ltp.sub === c.sub
          && ltp.events?.['http://schemas.openid.net/event/backchannel-logout'] && !ltp.nonce, 'logout_token claims', ltp);
        check(bclReceived[0].path === '/.portcullis/backchannel-logout' && bclReceived[0].ct === 'application/x-www-form-urlencoded', 'logout_token POST form');
      }
      const manual = await req(null, `${origin}/_test/backchannel_logout`, { method: 'POST', json: { client_id: clientId, user: 'alice', sid: 'sid-123' } });
      check(manual.status === 200 && bclReceived.length === 2 && decodeJwt(bclReceived[1].body.logout_token).payload.sid === 'sid-123', '/_test/backchannel_logout delivers', manual.json);
    }
    // logout without any provider cookies (fresh jar): auto-submit form, same POST
    {
      const fresh = new Jar();
      const u = new URL(disco.end_session_endpoint);
      u.searchParams.set('client_id', clientId);
      u.searchParams.set('post_logout_redirect_uri', postLogoutUri);
      const f1 = await req(fresh, u.href);
      const a = /<form[^>]*action="([^"]+)"/.exec(f1.text)?.[1];
      const x = /name="xsrf" value="([^"]+)"/.exec(f1.text)?.[1];
      const f2 = await req(fresh, a, { method: 'POST', form: { xsrf: x, logout: 'yes' } });
      check(f1.status === 200 && f2.status === 303 && f2.location === postLogoutUri, 'end_session without provider session (client_id, no hint)', { s1: f1.status, s2: f2.status, loc: f2.location });
    }
    const after = await login(jar, disco, {
      clientId, redirectUri, user: 'alice', password: 'alice-pw', scope: 'openid',
    });
    check(after.trace.some((t) => t.startsWith('POST')), 'after logout a new login is required', after.trace);
    const rf2 = await tokenRequest(disco, { grant_type: 'refresh_token', refresh_token: tok.refresh_token }, { clientId, secret });
    check(rf2.status === 400 && rf2.json.error === 'invalid_grant', 'refresh token revoked by logout', rf2.json);

    st = (await req(null, `${origin}/_test/stats`)).json;
    check(st.end_session === 2 && st.end_session_confirm === 2, 'stats: end_session + cc', st);
    if (child) check(st.backchannel_logout.ok === 2, 'stats: backchannel', st.backchannel_logout);
  } finally {
    if (child) {
      child.kill('SIGTERM');
      const code = await waitExit(child, 3000);
      check(code === 0, 'provider exits 0 on SIGTERM', code);
      const lines = child.getStdout().split('\n').filter(Boolean);
      check(lines.length === 1, 'provider printed exactly one stdout line', lines);
      bclServer.close();
    }
  }

  if (child) {
    const c2 = await startProvider({});
    c2.stdin.end();
    const code = await waitExit(c2, 3000);
    check(code === 0, 'provider exits 0 when stdin closes', code);
    if (code === 'timeout') c2.kill('SIGKILL');
  }
}

try {
  await main();
} catch (e) {
  failed += 1;
  process.stdout.write(`FAIL - ${e.stack}\n`);
}
process.stdout.write(`${passed} passed, ${failed} failed\n`);
process.exit(failed ? 1 : 0);
