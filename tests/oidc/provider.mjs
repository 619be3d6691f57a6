// A real OpenID Connect provider (npm's oidc-provider, OpenID Certified) for hubops's tests.
// Usage: node provider.mjs CONFIG.json. CONFIG: {issuer, host, port, cert, key, cookie_key,
// clients: [{client_id, client_secret, redirect_uris}], accounts: {name: {groups: [...]}}}.
// Login and consent are oidc-provider's own interaction pages (devInteractions): a login form
// (the account name; the password field is not checked by these pages) and a consent page.
// Accounts not in CONFIG are refused. Prints "listening" once it serves; logs one line per request.
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const accounts = cfg.accounts;

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients.map((c) => ({
    ...c,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
  },
  cookies: { keys: [cfg.cookie_key] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    // Re-read the accounts file each time: the tests change groups and remove accounts while it runs.
    const now = JSON.parse(fs.readFileSync(process.argv[2], 'utf8')).accounts;
    if (!now[id]) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.test`, groups: now[id].groups };
      },
    };
  },
});
// With CONFIG.token_log (a file): every authorization code, access token and ID token issued is
// appended to it, one per line, so that a test can look for them where they must not be.
function keepTokens(ctx) {
  if (!cfg.token_log) return;
  const found = [];
  const location = ctx.response.get('Location') || '';
  const code = /[?&]code=([^&#]+)/.exec(location);
  if (code) found.push(decodeURIComponent(code[1]));
  const body = ctx.body;
  if (ctx.path === '/token' && body && typeof body === 'object' && !Buffer.isBuffer(body)) {
    for (const k of ['access_token', 'id_token', 'refresh_token']) if (body[k]) found.push(body[k]);
  }
  if (found.length) fs.appendFileSync(cfg.token_log, found.map((v) => `${v}\n`).join(''), { mode: 0o600 });
}
provider.use(async (ctx, next) => {
  await next();
  console.log(`${ctx.method} ${ctx.path} ${ctx.status}`);
  keepTokens(ctx);
});
provider.on('server_error', (ctx, err) => console.log(`server_error ${err}`));

https.createServer({ key: fs.readFileSync(cfg.key), cert: fs.readFileSync(cfg.cert) }, provider.callback())
  .listen(cfg.port, cfg.host, () => console.log('listening'));
