/**
 * Small pieces every page uses: the hash router, labelled fields with their inline errors,
 * the problem banner, the confirmation dialog (a native modal `<dialog>`: focus kept inside,
 * Escape cancels), state badges and times.
 */
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, type FieldError } from './api.js';

// ---- routing: `#/clusters/abc` → ['clusters', 'abc'] ----

const currentRoute = (): string[] => decodeURIComponent(location.hash.replace(/^#\/?/, '')).split('/').filter(Boolean);

export function useRoute(): string[] {
  const [route, setRoute] = useState(currentRoute);
  useEffect(() => {
    const on = () => setRoute(currentRoute());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return route;
}

export const href = (...parts: string[]): string => `#/${parts.map(encodeURIComponent).join('/')}`;
export const go = (...parts: string[]): void => {
  location.hash = href(...parts);
};

// ---- data loading ----

/** Runs `load` on mount and whenever `deps` change; `reload` runs it again. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): { data?: T; error?: ApiError; reload: () => void } {
  const [state, setState] = useState<{ data?: T; error?: ApiError }>({});
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    load().then(
      (data) => live && setState({ data }),
      (error: unknown) => live && setState({ error: asApiError(error) }),
    );
    return () => {
      live = false;
    };
  }, [...deps, n]);
  return { ...state, reload: () => setN((x) => x + 1) };
}

export const asApiError = (err: unknown): ApiError => (err instanceof ApiError ? err : new ApiError(0, { title: 'Error', detail: String((err as Error)?.message ?? err) }));

// ---- page frame ----

/** The page's heading, focused when the page opens so a screen reader announces it and Tab starts there. */
export function PageTitle(props: { children: ComponentChildren }) {
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    ref.current?.focus();
  }, []);
  return (
    <h1 tabIndex={-1} ref={ref}>
      {props.children}
    </h1>
  );
}

/** A problem as the API said it, for everyone (`role=alert` announces it). */
export function ProblemBanner(props: { error?: ApiError; what?: string }) {
  const e = props.error;
  if (!e) return null;
  const fields = e.errors;
  return (
    <div class="problem" role="alert">
      <strong>{props.what ? `${props.what}: ` : ''}{e.problem.title ?? 'Error'}</strong>
      {e.status ? ` (${e.status})` : ''} — {e.message}
      {fields.length > 1 && (
        <ul>
          {fields.map((f) => (
            <li key={`${f.field}:${f.message}`}>
              <code>{f.field || 'body'}</code>: {f.message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export const Loading = () => (
  <p class="muted" role="status">
    Loading…
  </p>
);

// ---- fields with inline errors ----

let ids = 0;
const useId = (prefix: string) => useRef(`${prefix}-${++ids}`).current;

/**
 * The errors of a 422 that belong to a field, by JSON pointer: `/repositories` takes
 * `/repositories/2` too. `exact` takes only the pointer itself.
 */
export function errorsAt(errors: FieldError[] | undefined, pointer: string, exact = false): FieldError[] {
  return (errors ?? []).filter((e) => {
    const p = e.pointer ?? '';
    return p === pointer || (!exact && p.startsWith(`${pointer}/`));
  });
}

/** What a list field's errors say, with "line n" for an item of the list (`/repositories/2` → line 3). */
export function describeErrors(errors: FieldError[], pointer: string, itemWord = 'line'): string[] {
  return errors.map((e) => {
    const rest = (e.pointer ?? '').slice(pointer.length).split('/').filter(Boolean);
    if (rest.length === 0) return e.message;
    const [first] = rest;
    return /^\d+$/.test(first) ? `${itemWord} ${Number(first) + 1}: ${e.message}` : `${first.replace(/~1/g, '/').replace(/~0/g, '~')}: ${e.message}`;
  });
}

interface FieldProps {
  label: string;
  hint?: ComponentChildren;
  errors?: string[];
  children: (id: string, describedBy: string | undefined, invalid: boolean) => ComponentChildren;
}

/** A label, the control, a hint and the control's errors, tied together for assistive technology. */
export function Field(props: FieldProps) {
  const id = useId('f');
  const hintId = props.hint ? `${id}-hint` : undefined;
  const errId = props.errors?.length ? `${id}-err` : undefined;
  const describedBy = [hintId, errId].filter(Boolean).join(' ') || undefined;
  return (
    <div class={`field${errId ? ' has-error' : ''}`}>
      <label for={id}>{props.label}</label>
      {props.children(id, describedBy, errId !== undefined)}
      {props.hint && (
        <div class="hint" id={hintId}>
          {props.hint}
        </div>
      )}
      {errId && (
        <ul class="field-errors" id={errId}>
          {props.errors!.map((m) => (
            <li key={m}>{m}</li>
          ))}
        </ul>
      )}
    </div>
  );
}

/** The few input attributes the forms use. */
interface InputExtras {
  type?: 'text' | 'number' | 'password';
  min?: number;
  max?: number;
  required?: boolean;
  autocomplete?: string;
  list?: string;
}

type InputProps = InputExtras & {
  label: string;
  value: string;
  onValue: (v: string) => void;
  hint?: ComponentChildren;
  errors?: string[];
};

export function TextInput({ label, value, onValue, hint, errors, ...rest }: InputProps) {
  return (
    <Field label={label} hint={hint} errors={errors}>
      {(id, describedBy, invalid) => (
        <input
          id={id}
          value={value}
          aria-describedby={describedBy}
          aria-invalid={invalid || undefined}
          onInput={(e) => onValue((e.currentTarget as HTMLInputElement).value)}
          // preact types `list` per input type; these few attributes are plain ones.
          {...(rest as Record<string, unknown>)}
        />
      )}
    </Field>
  );
}

type AreaProps = {
  rows?: number;
  class?: string;
  autocomplete?: string;
  label: string;
  value: string;
  onValue: (v: string) => void;
  hint?: ComponentChildren;
  errors?: string[];
};

export function TextArea({ label, value, onValue, hint, errors, ...rest }: AreaProps) {
  return (
    <Field label={label} hint={hint} errors={errors}>
      {(id, describedBy, invalid) => (
        <textarea
          id={id}
          value={value}
          spellcheck={false}
          aria-describedby={describedBy}
          aria-invalid={invalid || undefined}
          onInput={(e) => onValue((e.currentTarget as HTMLTextAreaElement).value)}
          {...rest}
        />
      )}
    </Field>
  );
}

export function Select(props: { label: string; value: string; onValue: (v: string) => void; options: { value: string; label: string }[]; hint?: ComponentChildren; errors?: string[] }) {
  return (
    <Field label={props.label} hint={props.hint} errors={props.errors}>
      {(id, describedBy, invalid) => (
        <select id={id} value={props.value} aria-describedby={describedBy} aria-invalid={invalid || undefined} onChange={(e) => props.onValue((e.currentTarget as HTMLSelectElement).value)}>
          {props.options.map((o) => (
            <option key={o.value} value={o.value}>
              {o.label}
            </option>
          ))}
        </select>
      )}
    </Field>
  );
}

// ---- confirmation ----

/**
 * A button that asks first, in a modal dialog naming what will happen. The dialog's
 * Cancel button has the focus when it opens: Enter there does nothing harmful.
 */
export function ConfirmButton(props: { label: string; title: string; children: ComponentChildren; confirmLabel: string; onConfirm: () => void | Promise<void>; danger?: boolean; disabled?: boolean }) {
  const ref = useRef<HTMLDialogElement>(null);
  const cancel = useRef<HTMLButtonElement>(null);
  const titleId = useId('dlg');
  const open = () => {
    ref.current?.showModal();
    cancel.current?.focus();
  };
  return (
    <>
      <button type="button" class={props.danger ? 'danger' : ''} onClick={open} disabled={props.disabled}>
        {props.label}
      </button>
      <dialog ref={ref} aria-labelledby={titleId}>
        <h2 id={titleId}>{props.title}</h2>
        <div>{props.children}</div>
        <form method="dialog" class="actions">
          <button ref={cancel} value="cancel">
            Cancel
          </button>
          <button
            class={props.danger ? 'danger' : 'primary'}
            value="ok"
            onClick={() => {
              void props.onConfirm();
            }}
          >
            {props.confirmLabel}
          </button>
        </form>
      </dialog>
    </>
  );
}

// ---- small views ----

export function StateBadge(props: { state: string }) {
  return <span class={`badge state-${props.state.toLowerCase().replace(/_/g, '-')}`}>{props.state}</span>;
}

/** A time as the user's locale writes it, with the exact ISO time on hover. */
export function Time(props: { iso?: string }) {
  if (!props.iso) return <span class="muted">—</span>;
  const d = new Date(props.iso);
  return <time dateTime={props.iso} title={props.iso}>{d.toLocaleString()}</time>;
}

/** A ready/desired bar: a native `<progress>` (announced as a percentage) with the numbers beside it. */
export function ReadyBar(props: { ready: number; desired: number; label: string }) {
  const max = Math.max(props.desired, 1);
  return (
    <span class="ready-bar">
      <progress max={max} value={Math.min(props.ready, max)} aria-label={props.label} />
      <span class="ready-count">
        {props.ready} / {props.desired} ready
      </span>
    </span>
  );
}
