// The identity provider of tests/oidc.rs: the OpenID-certified `oidc-provider` (npm), over
// HTTPS on loopback, with one confidential client (tonewall) that must use PKCE, and a login
// page of its own that reports how each test person authenticated: `amr` ["pwd", "otp"] for
// people with a second factor, ["pwd"] for the one without.
//
//   node provider.mjs CERT KEY REDIRECT_URI CLIENT_SECRET
// prints `issuer https://127.0.0.1:PORT` once it listens.
import https from 'node:https';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const [cert, key, redirectUri, clientSecret] = process.argv.slice(2);

const PEOPLE = {
  alice: { password: 'alice-password-1', groups: ['staff', 'cc-agents'], team: 'north', amr: ['pwd', 'otp'] },
  bob: { password: 'bob-password-22', groups: ['cc-agents'], team: 'south', amr: ['pwd'] },
  quinn: { password: 'quinn-password-3', groups: ['cc-qa'], team: 'north', amr: ['pwd', 'otp'] },
  eve: { password: 'eve-password-555', groups: ['cc-agents'], team: 'south', amr: ['pwd', 'otp'] },
  mallory: { password: 'mallory-pass-44', groups: ['staff'], team: 'north', amr: ['pwd', 'otp'] },
};

const escape = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

async function body(req) {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 10000) throw new Error('body too large');
  }
  return new URLSearchParams(text);
}

function page(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><meta charset=utf-8><title>Test IdP</title>${html}`);
}

let provider;
const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, async (req, res) => {
  try {
    const m = req.url.match(/^\/interaction\/([\w-]+)(\/login)?$/);
    if (!m) return provider.callback()(req, res);
    const details = await provider.interactionDetails(req, res);
    if (req.method === 'GET') {
      return page(res, 200, `<h1>Test identity provider</h1>
        <form method=post action="/interaction/${escape(details.uid)}/login">
          <input id=username name=username autocomplete=username>
          <input id=password name=password type=password autocomplete=current-password>
          <button id=submit type=submit>Sign in</button>
        </form>`);
    }
    const form = await body(req);
    const who = PEOPLE[form.get('username')];
    if (!who || who.password !== form.get('password')) {
      return page(res, 401, '<p id=refused>wrong username or password</p>');
    }
    const result = { login: { accountId: form.get('username'), amr: who.amr, acr: who.amr.length > 1 ? 'urn:test:mfa' : 'urn:test:pwd' } };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  } catch (e) {
    console.error('provider error', e);
    if (!res.headersSent) page(res, 500, `<p>${escape(e.message)}</p>`);
  }
});

server.listen(0, '127.0.0.1', () => {
  const issuer = `https://127.0.0.1:${server.address().port}`;
  provider = new Provider(issuer, {
    clients: [{
      client_id: 'tonewall',
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    pkce: { required: () => true },
    cookies: { keys: ['tonewall-test-cookie-key'] },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    claims: { auth_time: null, openid: ['sub', 'amr', 'acr'], profile: ['preferred_username', 'groups', 'team'] },
    conformIdTokenClaims: false,
    async findAccount(ctx, sub) {
      const who = PEOPLE[sub];
      if (!who) return undefined;
      return { accountId: sub, claims: async () => ({ sub, preferred_username: sub, groups: who.groups, team: who.team }) };
    },
    // A first-party client: no consent screen.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid profile');
      await grant.save();
      return grant;
    },
  });
  provider.proxy = false;
  console.log(`issuer ${issuer}`);
});
