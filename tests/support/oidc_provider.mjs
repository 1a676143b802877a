// A real OpenID provider for the tests: the npm package oidc-provider (certified), with one
// confidential client, users (and their groups) read from a JSON file at every lookup, and
// its development login and consent pages, which a browser fills like a person. For tests
// only: in-memory storage, development signing keys. tests/support/oidc.py starts it.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const cfg = JSON.parse(process.env.OIDC_TEST_CONFIG);
// The package installed into .cache/npm (ES modules do not read NODE_PATH).
const entry = pathToFileURL(path.join(cfg.package, 'lib', 'index.js'));
const { default: Provider } = await import(entry.href);

function users() {
  return JSON.parse(fs.readFileSync(cfg.users_file, 'utf8'));
}

const provider = new Provider(cfg.issuer, {
  clients: [
    {
      client_id: cfg.client_id,
      client_secret: cfg.client_secret,
      redirect_uris: [cfg.redirect_uri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
    groups: ['groups'],
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  // Refresh tokens for the offline_access scope, kept as they are (not rotated).
  issueRefreshToken: async (ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  rotateRefreshToken: false,
  async findAccount(ctx, id) {
    const user = users()[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        const now = users()[id] || { groups: [] };
        return {
          sub: id,
          preferred_username: id,
          name: now.name || id,
          email: now.email || `${id}@example.org`,
          groups: now.groups || [],
        };
      },
    };
  },
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(cfg.port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${cfg.issuer}`);
});
