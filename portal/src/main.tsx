/**
 * The web portal's entry point: sign-in (the site's OIDC provider where it offers one, or
 * paste an API token; either checked with `GET /v1/me`), the frame (skip link, navigation,
 * who is signed in) and the pages by hash route.
 */
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import type { LoginOptions } from '../../api/schemas.js';
import { api, type ApiError, hasToken, onSignedOut, setToken, type Me } from './api.js';
import { ClusterList, ClusterPage } from './clusters.js';
import { ContextEdit, ContextList, ContextPage } from './contexts.js';
import { DefinitionEditor, DefinitionList, DefinitionPage } from './definitions.js';
import { finishSignIn, isCallback, issuerLabel, startSignIn, type OidcLogin } from './oidc.js';
import { asApiError, href, PageTitle, ProblemBanner, useRoute } from './ui.js';

/** "Sign in with <issuer>": off to the provider (the page comes back through {@link finishSignIn}). */
function OidcSignIn(props: { login: OidcLogin }) {
  const [error, setError] = useState<ApiError>();
  const [busy, setBusy] = useState(false);
  const go = () => {
    setBusy(true);
    setError(undefined);
    startSignIn(props.login).catch((err: unknown) => {
      setError(asApiError(err));
      setBusy(false);
    });
  };
  return (
    <div class="oidc">
      <button class="primary" type="button" onClick={go} disabled={busy}>
        Sign in with {issuerLabel(props.login.issuer)}
      </button>
      <ProblemBanner error={error} what={`Sign-in with ${issuerLabel(props.login.issuer)} failed`} />
      <p class="hint">Or paste a token:</p>
    </div>
  );
}

function SignIn(props: { onSignedIn: (me: Me) => void; reason?: string; login?: OidcLogin; error?: ApiError }) {
  const [value, setValue] = useState('');
  const [error, setError] = useState<ApiError>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    setToken(value.trim());
    try {
      props.onSignedIn(await api<Me>('GET', '/v1/me'));
    } catch (err) {
      setToken(undefined);
      setError(err as ApiError);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main id="main" class="signin">
      <PageTitle>Sign in to cloudgate</PageTitle>
      {props.reason && (
        <p class="notice" role="status">
          You were signed out: {props.reason}
        </p>
      )}
      <ProblemBanner error={props.error} what="Sign-in failed" />
      {props.login?.clientId && <OidcSignIn login={props.login} />}
      <form onSubmit={submit}>
        <div class="field">
          <label for="token">API token</label>
          <input id="token" type="password" autocomplete="off" required value={value} onInput={(e) => setValue((e.currentTarget as HTMLInputElement).value)} aria-describedby="token-hint" />
          <div class="hint" id="token-hint">
            A token an admin issued you (<code>cg_…</code>) or an OIDC access token of this site. It is kept in this tab only and forgotten when the tab closes.
          </div>
        </div>
        <ProblemBanner error={error} what="Sign-in failed" />
        <button class="primary" type="submit" disabled={busy || value.trim() === ''}>
          Sign in
        </button>
      </form>
    </main>
  );
}

const SECTIONS = [
  { route: 'clusters', label: 'Clusters' },
  { route: 'definitions', label: 'Definitions' },
  { route: 'contexts', label: 'Contexts' },
] as const;

function Page(props: { route: string[]; me: Me }) {
  const [section = 'clusters', id, sub] = props.route;
  if (section === 'clusters') return id ? <ClusterPage key={id} id={id} /> : <ClusterList />;
  if (section === 'definitions') {
    if (id === 'new') return <DefinitionEditor key="new" />;
    if (id && sub === 'copy') return <DefinitionEditor key={`copy-${id}`} from={id} />;
    return id ? <DefinitionPage key={id} id={id} /> : <DefinitionList />;
  }
  if (section === 'contexts') {
    if (id === 'new') return <ContextEdit key="new" />;
    if (id && sub === 'edit') return <ContextEdit key={`edit-${id}`} id={id} />;
    return id ? <ContextPage key={id} id={id} me={props.me} /> : <ContextList />;
  }
  return (
    <>
      <PageTitle>Not found</PageTitle>
      <p>
        There is no page here. <a href={href('clusters')}>Go to the clusters</a>.
      </p>
    </>
  );
}

function App() {
  const [me, setMe] = useState<Me>();
  const [checking, setChecking] = useState(hasToken() || isCallback());
  const [reason, setReason] = useState<string>();
  const [login, setLogin] = useState<OidcLogin>();
  const [signInError, setSignInError] = useState<ApiError>();
  const route = useRoute();

  useEffect(
    () =>
      onSignedOut((why) => {
        setMe(undefined);
        setReason(why ?? 'the API no longer accepts the token');
      }),
    [],
  );
  useEffect(() => {
    // How else one may sign in (public); without it, the token form alone.
    const options = api<LoginOptions>('GET', '/v1/login-options').then(
      (o) => {
        setLogin(o.oidc);
        return o.oidc;
      },
      () => undefined,
    );
    // Back from the provider: trade the code for the access token, which then stands where a pasted token does.
    if (isCallback()) {
      options
        .then(async (oidc) => {
          if (!oidc) throw new Error('this site offers no OIDC sign-in');
          const signedIn = await finishSignIn(oidc);
          setToken(signedIn.accessToken, signedIn.expiresAt);
          setMe(await api<Me>('GET', '/v1/me'));
        })
        .catch((err: unknown) => {
          setToken(undefined);
          setReason(undefined);
          setSignInError(asApiError(err));
        })
        .finally(() => setChecking(false));
      return;
    }
    // A reload of the tab: the token from sessionStorage, checked again.
    if (!hasToken()) return;
    api<Me>('GET', '/v1/me').then(setMe, () => setToken(undefined)).finally(() => setChecking(false));
  }, []);

  if (checking) return <main id="main" aria-busy="true" />;
  if (!me) {
    return (
      <>
        <header class="top">
          <span class="brand">cloudgate</span>
        </header>
        <SignIn
          reason={reason}
          login={login}
          error={signInError}
          onSignedIn={(m) => {
            setReason(undefined);
            setSignInError(undefined);
            setMe(m);
          }}
        />
      </>
    );
  }
  const section = route[0] ?? 'clusters';
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => {
        e.preventDefault();
        document.getElementById('main')?.focus();
      }}>
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href={href('clusters')}>
          cloudgate
        </a>
        <nav aria-label="Main">
          <ul>
            {SECTIONS.map((s) => (
              <li key={s.route}>
                <a href={href(s.route)} aria-current={section === s.route ? 'page' : undefined}>
                  {s.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="who">
          Signed in as <strong>{me.owner}</strong>
          {me.role === 'admin' ? ' (admin)' : ''}
          <button
            type="button"
            onClick={() => {
              setToken(undefined);
              setReason(undefined);
              setSignInError(undefined);
              setMe(undefined);
            }}
          >
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <Page route={route} me={me} />
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
