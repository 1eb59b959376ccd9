#!/usr/bin/env node
// Authentik-shaped OpenID Connect provider for Portcullis SSO tests.
//
// Built on panva's oidc-provider 9.x. See README.md in this folder for the
// configuration knobs, the browserless login sequence and the /_test/ control
// endpoints. Contract with test harnesses:
//   * stdout carries exactly ONE line: {"ready":true,"port":N,"issuer":"...",...}
//   * everything else (logs, library notices) goes to stderr
//   * exits 0 on SIGTERM / SIGINT and when stdin (a pipe) reaches EOF.

// oidc-provider prints some notices with console.info (= stdout). Route every
// console method to stderr *before* the library is loaded (dynamic import below).
for (const m of ['log', 'info', 'debug', 'trace']) {
  // eslint-disable-next-line no-console
  console[m] = (...args) => console.error(...args);
}

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

const { default: Provider, errors } = await import('oidc-provider');
// Test-only key rotation rebuilds the provider's keystore in place.
const { default: initializeKeystore } = await import('oidc-provider/lib/helpers/initialize_keystore.js');

// ---------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------

function fail(msg) {
  process.stderr.write(`oidc-test-provider: ${msg}\n`);
  process.exit(2);
}

function parseJsonSource(src, what) {
  if (src === undefined || src === '') return undefined;
  try {
    if (src.startsWith('@')) return JSON.parse(fs.readFileSync(src.slice(1), 'utf8'));
    return JSON.parse(src);
  } catch (e) {
    return fail(`cannot parse ${what}: ${e.message}`);
  }
}

function list(v) {
  if (v === undefined || v === null) return undefined;
  if (Array.isArray(v)) return v.map(String);
  return String(v).split(/[\s,]+/).filter(Boolean);
}

function bool(v, dflt) {
  if (v === undefined || v === null || v === '') return dflt;
  if (typeof v === 'boolean') return v;
  return /^(1|true|yes|on)$/i.test(String(v));
}

function int(v, dflt, what) {
  if (v === undefined || v === null || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) fail(`${what} must be a non-negative integer, got ${v}`);
  return n;
}

const env = process.env;
const fileCfg = parseJsonSource(process.argv[2], 'JSON argument')
  ?? parseJsonSource(env.OIDC_CONFIG, 'OIDC_CONFIG') ?? {};
const pick = (key, envName) => (fileCfg[key] !== undefined ? fileCfg[key] : env[envName]);
const ttlCfg = fileCfg.ttl || {};
const pickTtl = (key, envName, dflt) => int(
  ttlCfg[key] !== undefined ? ttlCfg[key] : env[envName],
  dflt,
  envName,
);

const cfg = {
  port: int(pick('port', 'PORT'), 0, 'PORT'),
  slug: String(pick('slug', 'SLUG') || 'portcullis'),
  idTokenAlg: String(pick('id_token_alg', 'ID_TOKEN_ALG') || 'RS256'),
  accessTokenAlg: String(pick('access_token_alg', 'ACCESS_TOKEN_ALG') || 'RS256'),
  rotateRefreshTokens: bool(pick('rotate_refresh_tokens', 'ROTATE_REFRESH_TOKENS'), false),
  pkceRequired: bool(pick('pkce_required', 'PKCE_REQUIRED'), false),
  logoutRevokesTokens: bool(pick('logout_revokes_tokens', 'LOGOUT_REVOKES_TOKENS'), true),
  clockTolerance: int(pick('clock_tolerance', 'CLOCK_TOLERANCE'), 0, 'CLOCK_TOLERANCE'),
  log: bool(pick('log', 'LOG'), true),
  exitOnStdinClose: pick('exit_on_stdin_close', 'EXIT_ON_STDIN_CLOSE'),
  ttl: {
    accessToken: pickTtl('access_token', 'ACCESS_TOKEN_TTL', 300),
    idToken: pickTtl('id_token', 'ID_TOKEN_TTL', 300),
    refreshToken: pickTtl('refresh_token', 'REFRESH_TOKEN_TTL', 30 * 24 * 3600),
    authCode: pickTtl('auth_code', 'AUTH_CODE_TTL', 60),
    session: pickTtl('session', 'SESSION_TTL', 14 * 24 * 3600),
    interaction: pickTtl('interaction', 'INTERACTION_TTL', 3600),
  },
  jwks: fileCfg.jwks,
};

if (!/^[A-Za-z0-9._~-]+$/.test(cfg.slug)) fail(`invalid slug ${cfg.slug}`);
const SUPPORTED_ALGS = ['RS256', 'ES256', 'HS256'];
if (!SUPPORTED_ALGS.includes(cfg.idTokenAlg)) fail(`ID_TOKEN_ALG must be one of ${SUPPORTED_ALGS}`);
if (!['RS256', 'ES256'].includes(cfg.accessTokenAlg)) fail('ACCESS_TOKEN_ALG must be RS256 or ES256');

const rawClients = fileCfg.clients ?? parseJsonSource(env.CLIENTS, 'CLIENTS') ?? [{
  client_id: env.CLIENT_ID || 'portcullis',
  client_secret: env.CLIENT_SECRET || 'portcullis-secret',
  redirect_uris: list(env.REDIRECT_URIS) ?? ['*'],
  post_logout_redirect_uris: list(env.POST_LOGOUT_REDIRECT_URIS) ?? ['*'],
  backchannel_logout_uri: env.BACKCHANNEL_LOGOUT_URI || undefined,
  id_token_signed_response_alg: env.ID_TOKEN_ALG || undefined,
}];

const rawUsers = fileCfg.users ?? parseJsonSource(env.USERS, 'USERS') ?? [
  {
    username: 'alice', password: 'alice-pw', email: 'alice@example.com', name: 'Alice Admin', groups: ['admins', 'users'],
  },
  {
    username: 'bob', password: 'bob-pw', email: 'bob@example.org', name: 'Bob User', groups: ['users'],
  },
];

// ---------------------------------------------------------------------------
// users
// ---------------------------------------------------------------------------

// Authentik's default subject mode is a hashed user id: a stable 64-hex string.
const stableSub = (username) => crypto.createHash('sha256').update(`portcullis-test-user:${username}`).digest('hex');

const users = rawUsers.map((u) => {
  if (!u.username || u.password === undefined) fail('every user needs username and password');
  return {
    username: String(u.username),
    password: String(u.password),
    sub: String(u.sub || stableSub(u.username)),
    email: u.email,
    email_verified: u.email_verified ?? true,
    name: u.name ?? u.username,
    groups: u.groups ?? [],
    extra: u.claims || {},
  };
});
const usersBySub = new Map(users.map((u) => [u.sub, u]));
const findUserByLogin = (login) => users.find((u) => u.username === login || (u.email && u.email === login));
const extraClaimNames = [...new Set(users.flatMap((u) => Object.keys(u.extra)))];

function userClaims(u) {
  return {
    sub: u.sub,
    email: u.email,
    email_verified: u.email_verified,
    name: u.name,
    preferred_username: u.username,
    groups: u.groups,
    ...u.extra,
  };
}

// ---------------------------------------------------------------------------
// clients + redirect uri patterns
// ---------------------------------------------------------------------------

// An entry '*' allows any redirect uri; an entry containing '*' is a glob where
// '*' matches any run of characters except '/', '?' and '#'
// (e.g. "http://app.localtest:*/.portcullis/callback").
function compileRedirects(entries) {
  const exact = [];
  const patterns = [];
  let any = false;
  for (const e of entries || []) {
    if (e === '*') any = true;
    else if (e.includes('*')) {
      const re = e.split('*').map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('[^/?#]*');
      patterns.push(new RegExp(`^${re}$`));
    } else exact.push(e);
  }
  const allows = (uri) => any || exact.includes(uri) || patterns.some((re) => re.test(uri));
  return { exact, allows, open: any || patterns.length > 0 };
}

const redirectPolicies = new Map(); // client_id -> { redirect, postLogout }
const clientSecrets = new Map();
const PLACEHOLDER_REDIRECT = 'http://127.0.0.1/portcullis-test-placeholder';

const clients = rawClients.map((c) => {
  if (!c.client_id || !c.client_secret) fail('every client needs client_id and client_secret');
  const alg = c.id_token_signed_response_alg || cfg.idTokenAlg;
  if (!SUPPORTED_ALGS.includes(alg)) fail(`client ${c.client_id}: unsupported id_token_signed_response_alg ${alg}`);
  const redirect = compileRedirects(c.any_redirect_uri ? ['*'] : (list(c.redirect_uris) ?? ['*']));
  const postLogout = compileRedirects(list(c.post_logout_redirect_uris) ?? ['*']);
  redirectPolicies.set(c.client_id, { redirect, postLogout });
  clientSecrets.set(c.client_id, String(c.client_secret));
  const meta = {
    client_id: String(c.client_id),
    client_secret: String(c.client_secret),
    redirect_uris: redirect.exact.length ? redirect.exact : [PLACEHOLDER_REDIRECT],
    post_logout_redirect_uris: postLogout.exact,
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_basic',
    id_token_signed_response_alg: alg,
  };
  if (c.backchannel_logout_uri) {
    meta.backchannel_logout_uri = c.backchannel_logout_uri;
    meta.backchannel_logout_session_required = c.backchannel_logout_session_required ?? true;
  }
  if (c.scope) meta.scope = c.scope;
  return meta;
});
const defaultClientId = clients[0]?.client_id;

// ---------------------------------------------------------------------------
// keys
// ---------------------------------------------------------------------------

const b64u = (buf) => Buffer.from(buf).toString('base64url');

function thumbprint(jwk) {
  const members = jwk.kty === 'RSA'
    ? { e: jwk.e, kty: jwk.kty, n: jwk.n }
    : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  return b64u(crypto.createHash('sha256').update(JSON.stringify(members)).digest());
}

function makeKey(alg) {
  const { privateKey } = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: thumbprint(jwk), alg, use: 'sig' };
}

const needEc = cfg.accessTokenAlg === 'ES256' || clients.some((c) => c.id_token_signed_response_alg === 'ES256');
const jwksKeys = cfg.jwks?.keys ?? [makeKey('RS256'), ...(needEc ? [makeKey('ES256')] : [])];
const keyFor = (alg) => {
  const kty = alg === 'ES256' ? 'EC' : 'RSA';
  const jwk = jwksKeys.find((k) => k.kty === kty && (!k.alg || k.alg === alg));
  if (!jwk) fail(`no ${alg} key in the configured jwks`);
  return jwk;
};
let foreignKeys; // lazily created keys that are NOT published (for negative bearer tests)

function signJwt(header, payload, { alg, jwk, secret }) {
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(payload))}`;
  let sig;
  if (alg === 'HS256') {
    sig = crypto.createHmac('sha256', secret).update(input).digest();
  } else if (alg === 'ES256') {
    sig = crypto.sign('sha256', Buffer.from(input), { key: crypto.createPrivateKey({ key: jwk, format: 'jwk' }), dsaEncoding: 'ieee-p1363' });
  } else {
    sig = crypto.sign('sha256', Buffer.from(input), crypto.createPrivateKey({ key: jwk, format: 'jwk' }));
  }
  return `${input}.${b64u(sig)}`;
}

// ---------------------------------------------------------------------------
// stats (test-only control surface)
// ---------------------------------------------------------------------------

function freshStats() {
  return {
    authorization_code: 0,
    refresh_token: 0,
    client_credentials: 0,
    token_errors: {},
    authorize: 0,
    logins: 0,
    login_failures: 0,
    userinfo: 0,
    end_session: 0,
    end_session_confirm: 0,
    backchannel_logout: { ok: 0, error: 0 },
  };
}
let stats = freshStats();

// ---------------------------------------------------------------------------
// provider
// ---------------------------------------------------------------------------

const HOST = '127.0.0.1';
const PREFIX = `/application/o/${cfg.slug}`; // without trailing slash
const BEARER_RESOURCE = 'urn:portcullis:test:bearer';

// The issuer depends on the listening port, so listen first, then build the provider.
const server = http.createServer();
await new Promise((resolve) => {
  server.once('error', (e) => fail(`cannot listen on ${HOST}:${cfg.port}: ${e.message}`));
  server.listen(cfg.port, HOST, resolve);
});
const { port } = server.address();
const ISSUER = `http://${HOST}:${port}${PREFIX}/`;

const provider = new Provider(ISSUER, {
  clients,
  jwks: { keys: jwksKeys },
  cookies: {
    keys: [crypto.randomBytes(32).toString('base64url')],
    long: { httpOnly: true, sameSite: 'lax', signed: true },
    short: { httpOnly: true, sameSite: 'lax', signed: true },
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'groups', ...extraClaimNames],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access'],
  conformIdTokenClaims: false,
  allowOmittingSingleRegisteredRedirectUri: false,
  clientDefaults: {
    grant_types: ['authorization_code', 'refresh_token'],
    id_token_signed_response_alg: cfg.idTokenAlg,
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  responseTypes: ['code'],
  pkce: { required: () => cfg.pkceRequired },
  enabledJWA: {
    idTokenSigningAlgValues: ['RS256', 'ES256', 'HS256'],
  },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource,
      postLogoutSuccessSource,
    },
    backchannelLogout: { enabled: true },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
    dPoP: { enabled: false },
    pushedAuthorizationRequests: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // Only client_credentials gets a resource (=> JWT access token); the
      // authorization_code flow keeps opaque access tokens so /userinfo works.
      defaultResource(ctx, client, oneOf) {
        if (oneOf) return oneOf;
        if (ctx.oidc.route === 'token' && ctx.oidc.params.grant_type === 'client_credentials') {
          return BEARER_RESOURCE;
        }
        return undefined;
      },
      useGrantedResource: () => false,
      getResourceServerInfo(ctx, resourceIndicator, client) {
        if (resourceIndicator !== BEARER_RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: 'openid email profile groups api',
          audience: client.clientId,
          accessTokenTTL: cfg.ttl.accessToken,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: cfg.accessTokenAlg } },
        };
      },
    },
  },
  // Refresh token whenever the code's scope contains offline_access (the
  // prompt rewrite middleware below makes sure it is not stripped).
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && code.scopes.has('offline_access'),
  rotateRefreshToken: () => cfg.rotateRefreshTokens,
  // LOGOUT_REVOKES_TOKENS=1 (default): every token is bound to the login
  // session, so RP-initiated logout (or session expiry) revokes access and
  // refresh tokens, offline_access included. =0: oidc-provider's default,
  // offline_access grants survive logout.
  expiresWithSession: async (ctx, code) => cfg.logoutRevokesTokens || !code.scopes.has('offline_access'),
  clockTolerance: cfg.clockTolerance,
  ttl: {
    AccessToken: () => cfg.ttl.accessToken,
    ClientCredentials: () => cfg.ttl.accessToken,
    AuthorizationCode: () => cfg.ttl.authCode,
    IdToken: () => cfg.ttl.idToken,
    RefreshToken: () => cfg.ttl.refreshToken,
    Interaction: () => cfg.ttl.interaction,
    Session: () => cfg.ttl.session,
    Grant: () => Math.max(cfg.ttl.session, cfg.ttl.refreshToken),
  },
  interactions: {
    url: (ctx, interaction) => `${PREFIX}/interaction/${interaction.uid}`,
  },
  async findAccount(ctx, sub) {
    const u = usersBySub.get(sub);
    if (!u) return undefined;
    return {
      accountId: u.sub,
      async claims() { return userClaims(u); },
    };
  },
  async renderError(ctx, out, error) {
    ctx.type = 'json';
    ctx.body = out;
    if (cfg.log) process.stderr.write(`oidc-test-provider: render error ${JSON.stringify(out)} ${error?.stack || ''}\n`);
  },
  // oidc-provider refuses to POST to loopback/private addresses (SSRF guard);
  // the back-channel logout receivers in tests live on 127.0.0.1.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
});

// Per-client redirect uri policies ('*' and globs).
const origRedirectAllowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
  const p = redirectPolicies.get(this.clientId);
  if (p?.redirect.open) return p.redirect.allows(value);
  return origRedirectAllowed.call(this, value);
};
const origPostLogoutAllowed = provider.Client.prototype.postLogoutRedirectUriAllowed;
provider.Client.prototype.postLogoutRedirectUriAllowed = function postLogoutRedirectUriAllowed(value) {
  const p = redirectPolicies.get(this.clientId);
  if (p?.postLogout.open) return p.postLogout.allows(value);
  return origPostLogoutAllowed.call(this, value);
};

// Authentik puts `sid` in every ID token; oidc-provider only does so for
// clients with backchannel_logout_session_required.
provider.Client.prototype.includeSid = () => true;

function htmlEscape(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

// RP-initiated logout confirmation page: the form already carries logout=yes and
// auto-submits in a browser; a test client POSTs the hidden fields itself.
async function logoutSource(ctx, form) {
  const withLogout = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>');
  ctx.type = 'html';
  ctx.body = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Logout Request</title></head>
<body>
<p>Sign out of ${htmlEscape(ctx.oidc.client?.clientId || 'all applications')}?</p>
${withLogout}
<button type="submit" form="op.logoutForm">Yes, sign me out</button>
<script>document.addEventListener('DOMContentLoaded', function () { document.forms[0].submit() });</script>
</body></html>`;
}

async function postLogoutSuccessSource(ctx) {
  ctx.type = 'html';
  ctx.body = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signed out</title></head><body><p>You have been signed out.</p></body></html>';
}

// Front middleware (runs before oidc-provider's router).
provider.use(async (ctx, next) => {
  // Make oidc-provider generate every URL under /application/o/<slug>/ even
  // though the wrapper strips that prefix before handing the request over.
  ctx.mountPath = PREFIX;

  // oidc-provider (per OIDC Core 11) drops offline_access unless the request
  // carries prompt=consent. Authentik honours offline_access regardless, so add
  // `consent` (auto-granted by our interaction handler) to every authorization
  // request that asks for offline_access - except prompt=none, which cannot be
  // combined with anything (such a request gets no refresh token).
  if (ctx.method === 'GET' && ctx.path === '/auth') {
    stats.authorize += 1;
    const { scope, prompt } = ctx.query;
    if (typeof scope === 'string' && scope.split(' ').includes('offline_access')) {
      const prompts = typeof prompt === 'string' ? prompt.split(' ').filter(Boolean) : [];
      if (!prompts.includes('consent') && !prompts.includes('none')) {
        ctx.query = { ...ctx.query, prompt: [...prompts, 'consent'].join(' ') };
      }
    }
  }

  await next();

  const route = ctx.oidc?.route;
  if (route === 'token') {
    const gt = ctx.oidc.params?.grant_type || String(ctx.request.body?.grant_type || 'unknown');
    if (gt in stats && typeof stats[gt] === 'number') stats[gt] += 1;
    else stats[gt] = 1;
    if (ctx.status >= 400) stats.token_errors[gt] = (stats.token_errors[gt] || 0) + 1;
  } else if (route === 'userinfo') {
    stats.userinfo += 1;
  } else if (route === 'end_session') {
    stats.end_session += 1;
  } else if (route === 'end_session_confirm') {
    stats.end_session_confirm += 1;
  }
});

provider.on('backchannel.success', (ctx, client, accountId, sid) => {
  stats.backchannel_logout.ok += 1;
  log(`backchannel logout ok client=${client.clientId} sub=${accountId} sid=${sid}`);
});
provider.on('backchannel.error', (ctx, err, client, accountId, sid) => {
  stats.backchannel_logout.error += 1;
  log(`backchannel logout FAILED client=${client.clientId} sub=${accountId} sid=${sid}: ${err.message}`);
});
for (const ev of ['server_error', 'grant.error', 'authorization.error', 'end_session.error',
  'end_session_confirm.error', 'userinfo.error', 'introspection.error', 'revocation.error']) {
  provider.on(ev, (ctx, err) => log(`${ev}: ${err?.name} ${err?.message}${err?.error_description ? ` (${err.error_description})` : ''}`));
}

function log(msg) {
  if (cfg.log) process.stderr.write(`oidc-test-provider: ${msg}\n`);
}

// ---------------------------------------------------------------------------
// interactions (login form + automatic consent)
// ---------------------------------------------------------------------------

function loginPage(uid, { error, login = '', client } = {}) {
  const action = `${PREFIX}/interaction/${uid}`;
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in${client ? ` to ${htmlEscape(client)}` : ''}</h1>
${error ? `<p class="error" id="error">${htmlEscape(error)}</p>` : ''}
<form id="login" method="post" action="${htmlEscape(action)}">
<input type="text" name="login" value="${htmlEscape(login)}" autofocus/>
<input type="password" name="password"/>
<button type="submit">Sign in</button>
</form>
</body></html>`;
}

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function grantEverything(details, accountId) {
  const { params, prompt } = details;
  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
    if (grant && grant.accountId !== accountId) grant = undefined;
  }
  grant ||= new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  const d = prompt?.details || {};
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  if (d.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  return grant.save();
}

async function handleInteraction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    return sendJson(res, 400, { error: 'interaction_mismatch', error_description: 'interaction cookie does not match the URL' });
  }
  const promptName = details.prompt.name;

  if (req.method === 'GET') {
    if (promptName === 'login') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      return res.end(loginPage(uid, { client: details.params.client_id }));
    }
    if (promptName === 'consent') {
      const grantId = await grantEverything(details, details.session.accountId);
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    return sendJson(res, 400, { error: 'unsupported_prompt', prompt: promptName });
  }

  if (req.method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    if (promptName !== 'login') {
      // Nothing to enter: behave like the consent GET.
      const grantId = await grantEverything(details, details.session.accountId);
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    const login = form.get('login') ?? form.get('username') ?? '';
    const password = form.get('password') ?? '';
    const user = findUserByLogin(login);
    if (!user || user.password !== password) {
      stats.login_failures += 1;
      log(`login failed for ${JSON.stringify(login)}`);
      res.writeHead(401, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      return res.end(loginPage(uid, { error: 'Invalid username or password', login, client: details.params.client_id }));
    }
    stats.logins += 1;
    log(`login ok ${user.username} (${user.sub})`);
    const grantId = await grantEverything(details, user.sub);
    return provider.interactionFinished(req, res, {
      login: { accountId: user.sub, amr: ['pwd'] },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
  }

  res.writeHead(405, { allow: 'GET, POST' });
  return res.end();
}

// ---------------------------------------------------------------------------
// /_test/ control endpoints
// ---------------------------------------------------------------------------

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

async function readJson(req) {
  const text = await readBody(req);
  if (!text.trim()) return {};
  const ct = req.headers['content-type'] || '';
  if (ct.includes('application/x-www-form-urlencoded')) return Object.fromEntries(new URLSearchParams(text));
  return JSON.parse(text);
}

async function mint(body) {
  const now = Math.floor(Date.now() / 1000);
  const clientId = body.client_id || defaultClientId;
  let user;
  if (body.user !== undefined || body.sub === undefined) {
    user = findUserByLogin(body.user ?? 'alice');
    if (!user) throw Object.assign(new Error(`unknown user ${body.user}`), { status: 400 });
  }
  const alg = body.alg || cfg.accessTokenAlg;
  const ttl = body.ttl !== undefined ? Number(body.ttl) : cfg.ttl.accessToken;
  const payload = {
    iss: ISSUER,
    sub: body.sub ?? user.sub,
    aud: body.aud ?? clientId,
    exp: now + ttl,
    iat: now,
    auth_time: now,
    azp: clientId,
    jti: crypto.randomUUID(),
    scope: body.scope ?? 'openid email profile',
    ...(user ? (({ sub, ...rest }) => rest)(userClaims(user)) : {}),
    ...(body.claims || {}),
  };
  let signer;
  const header = { alg, typ: body.typ ?? 'JWT' };
  if (alg === 'HS256') {
    signer = { alg, secret: body.secret ?? clientSecrets.get(clientId) };
    if (!signer.secret) throw Object.assign(new Error('no secret for HS256'), { status: 400 });
  } else if (alg === 'RS256' || alg === 'ES256') {
    let jwk;
    if (body.foreign_key) {
      foreignKeys ||= {};
      foreignKeys[alg] ||= makeKey(alg);
      jwk = foreignKeys[alg];
    } else {
      jwk = keyFor(alg);
    }
    header.kid = body.kid ?? jwk.kid;
    signer = { alg, jwk };
  } else {
    throw Object.assign(new Error(`unsupported alg ${alg}`), { status: 400 });
  }
  return { access_token: signJwt(header, payload, signer), token_type: 'Bearer', expires_in: ttl, claims: payload, header };
}

async function handleTest(req, res, path) {
  if (path === '/_test/stats' && req.method === 'GET') return sendJson(res, 200, stats);
  if (path === '/_test/stats/reset' && req.method === 'POST') {
    stats = freshStats();
    return sendJson(res, 200, stats);
  }
  if (path === '/_test/config' && req.method === 'GET') {
    return sendJson(res, 200, {
      issuer: ISSUER,
      port,
      clients: clients.map(({ client_secret: _, ...c }) => c),
      users: users.map((u) => ({ ...userClaims(u) })),
      ttl: cfg.ttl,
      id_token_alg: cfg.idTokenAlg,
      access_token_alg: cfg.accessTokenAlg,
      bearer_resource: BEARER_RESOURCE,
    });
  }
  if (path === '/_test/mint' && req.method === 'POST') {
    try {
      return sendJson(res, 200, await mint(await readJson(req)));
    } catch (e) {
      return sendJson(res, e.status || 500, { error: e.message });
    }
  }
  if (path === '/_test/rotate_keys' && req.method === 'POST') {
    // New key material for every signing key; `same_kid: true` keeps each
    // key id (a provider that rotates without changing the kid).
    const body = await readJson(req);
    for (let i = 0; i < jwksKeys.length; i++) {
      const old = jwksKeys[i];
      const fresh = makeKey(old.alg || (old.kty === 'EC' ? 'ES256' : 'RS256'));
      jwksKeys[i] = body.same_kid ? { ...fresh, kid: old.kid } : fresh;
    }
    initializeKeystore.call(provider, { keys: jwksKeys });
    log(`signing keys rotated (same_kid=${Boolean(body.same_kid)})`);
    return sendJson(res, 200, { kids: jwksKeys.map((k) => k.kid) });
  }
  if (path === '/_test/backchannel_logout' && req.method === 'POST') {
    const body = await readJson(req);
    const client = await provider.Client.find(body.client_id || defaultClientId);
    if (!client) return sendJson(res, 400, { error: 'unknown client' });
    if (!client.backchannelLogoutUri) return sendJson(res, 400, { error: 'client has no backchannel_logout_uri' });
    const sub = body.sub ?? findUserByLogin(body.user ?? 'alice')?.sub;
    try {
      await client.backchannelLogout(sub, body.sid);
      stats.backchannel_logout.ok += 1;
      return sendJson(res, 200, { ok: true, client_id: client.clientId, sub, sid: body.sid });
    } catch (e) {
      stats.backchannel_logout.error += 1;
      return sendJson(res, 502, { ok: false, error: e.message });
    }
  }
  return sendJson(res, 404, { error: 'unknown test endpoint' });
}

// ---------------------------------------------------------------------------
// HTTP wrapper: /application/o/<slug>/... -> provider
// ---------------------------------------------------------------------------

const providerCallback = provider.callback();

server.on('request', async (req, res) => {
  const started = Date.now();
  const original = req.url;
  res.on('finish', () => log(`${req.method} ${original} -> ${res.statusCode} ${res.getHeader('location') ? `[${res.getHeader('location')}] ` : ''}(${Date.now() - started}ms)`));
  try {
    const q = original.indexOf('?');
    const pathname = q === -1 ? original : original.slice(0, q);
    const search = q === -1 ? '' : original.slice(q);

    let inner;
    if (pathname.startsWith(`${PREFIX}/`)) inner = pathname.slice(PREFIX.length);
    else if (pathname.startsWith('/_test/')) inner = pathname;
    else return sendJson(res, 404, { error: 'not_found', hint: `everything lives under ${PREFIX}/` });

    if (inner.startsWith('/_test/')) return await handleTest(req, res, inner);

    const m = /^\/interaction\/([^/]+)(?:\/login)?\/?$/.exec(inner);
    if (m) return await handleInteraction(req, res, m[1]);

    req.url = inner + search;
    return await providerCallback(req, res);
  } catch (err) {
    log(`wrapper error on ${req.method} ${original}: ${err.stack || err}`);
    if (!res.headersSent) {
      const status = err instanceof errors.SessionNotFound ? 400 : (err.statusCode || 500);
      return sendJson(res, status, { error: err.error || 'server_error', error_description: err.error_description || err.message });
    }
    return res.destroy();
  }
});

// ---------------------------------------------------------------------------
// lifecycle
// ---------------------------------------------------------------------------

let stopping = false;
function shutdown(why) {
  if (stopping) return;
  stopping = true;
  log(`shutting down (${why})`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGHUP', () => shutdown('SIGHUP'));

// Exit when stdin hits EOF - by default only if stdin is a pipe or socket (a
// harness holding the write end). /dev/null or a file would EOF at once, and
// reading a terminal from a background job would stop the process (SIGTTIN).
let watchStdin = String(cfg.exitOnStdinClose ?? 'auto').toLowerCase() === 'auto' ? undefined : bool(cfg.exitOnStdinClose, undefined);
if (watchStdin === undefined) {
  try {
    const st = fs.fstatSync(0);
    watchStdin = st.isFIFO() || st.isSocket();
  } catch {
    watchStdin = false;
  }
}
if (watchStdin) {
  process.stdin.on('data', () => {});
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}

log(`issuer ${ISSUER} clients=${clients.map((c) => c.client_id).join(',')} users=${users.map((u) => u.username).join(',')} id_token_alg=${cfg.idTokenAlg}`);
process.stdout.write(`${JSON.stringify({
  ready: true,
  port,
  issuer: ISSUER,
  discovery: `${ISSUER}.well-known/openid-configuration`,
  pid: process.pid,
})}\n`);
