// Talk to the TensorBoard page around our iframe: its plugin host API
// (postMessage "experimental.bootstrap" hands over a MessagePort; messages are
// JSON {type, id, payload, error, isReply}). TensorBoard broadcasts
// "experimental.DataReloaded" when its reload button (or auto-reload) fires.
// We probe with "experimental.GetRuns": a reply means the host is there.
// Also detects TensorBoard's dark mode (body.dark-mode on the parent page).

const DATA_RELOADED = "experimental.DataReloaded";
const RUNS_CHANGED = "experimental.RunsChanged";
const GET_RUNS = "experimental.GetRuns";

export function connectHost({ onReload, onConnected }) {
  const state = { connected: false, lastReload: 0 };
  if (window.parent === window) return state;
  let channel;
  try {
    channel = new MessageChannel();
  } catch (_err) {
    return state;
  }
  const port = channel.port1;
  port.onmessage = (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch (_err) {
      return;
    }
    if (!msg) return;
    if (msg.isReply) {
      // Our probe (below) was answered: TensorBoard's plugin host is there and
      // will tell us about reloads (its button and its own auto-reload).
      if (!state.connected) {
        state.connected = true;
        if (onConnected) onConnected();
      }
      return;
    }
    state.connected = true;
    if (msg.type === DATA_RELOADED || msg.type === RUNS_CHANGED) {
      state.lastReload = Date.now();
      try {
        onReload(msg.type);
      } catch (err) {
        console.error(err);
      }
    }
    port.postMessage(JSON.stringify({ type: msg.type, id: msg.id, payload: null, error: null, isReply: true }));
  };
  try {
    window.parent.postMessage("experimental.bootstrap", window.location.origin, [channel.port2]);
    port.start();
    port.postMessage(JSON.stringify({ type: GET_RUNS, id: 0, payload: null, error: null, isReply: false }));
  } catch (_err) {
    // cross-origin parent or no postMessage: stay with our own refresh timer.
  }
  return state;
}

function parentBody() {
  try {
    if (window.parent !== window && window.parent.document && window.parent.document.body) {
      return window.parent.document.body;
    }
  } catch (_err) {
    // cross-origin: no access
  }
  return null;
}

/** Calls onChange(isDark) now and whenever the theme changes. */
export function watchTheme(onChange) {
  const body = parentBody();
  const mq = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  let current = null;
  const compute = () => {
    // TensorBoard sets body.dark-mode on its page whenever dark mode is on
    // (explicitly or following the system); without access, follow the system.
    const dark = body ? body.classList.contains("dark-mode") : Boolean(mq && mq.matches);
    if (dark !== current) {
      current = dark;
      onChange(dark);
    }
  };
  compute();
  if (body && typeof MutationObserver !== "undefined") {
    new MutationObserver(compute).observe(body, { attributes: true, attributeFilter: ["class"] });
  }
  if (mq && mq.addEventListener) mq.addEventListener("change", compute);
  return () => current;
}

/** URL of the TensorBoard page (parent window) with `hash`, or null. */
export function parentUrlWithHash(hash) {
  try {
    const loc = window.parent.location;
    return `${loc.origin}${loc.pathname}${loc.search}#${hash}`;
  } catch (_err) {
    return null;
  }
}

/** Open `#hash` in the TensorBoard page (e.g. "graphs&run=foo"). */
export function openInParent(hash) {
  try {
    if (window.parent !== window) {
      window.parent.location.hash = hash;
      return true;
    }
  } catch (_err) {
    // fall through
  }
  return false;
}
