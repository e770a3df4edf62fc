// Tiny DOM helpers. Every string from the logs goes through textContent or
// setAttribute: never innerHTML. tests/test_frontend_bundle.py greps src/ for
// innerHTML/outerHTML/insertAdjacentHTML/document.write and fails on any use.

const SVG_NS = "http://www.w3.org/2000/svg";

function applyAttrs(el, attrs) {
  if (!attrs) return;
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") {
      el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) {
        if (v !== null && v !== undefined) el.dataset[k] = String(v);
      }
    } else if (key === "on") {
      for (const [evt, fn] of Object.entries(value)) el.addEventListener(evt, fn);
    } else if (key === "text") {
      el.textContent = String(value);
    } else if (key === "style" && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) {
        if (k.startsWith("--")) el.style.setProperty(k, v);
        else el.style[k] = v;
      }
    } else if (key === "value" && "value" in el) {
      el.value = value;
    } else if (key === "checked" || key === "selected" || key === "disabled") {
      el[key] = Boolean(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function appendChildren(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) appendChildren(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Create an HTML element: h("div", {class: "x"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  applyAttrs(el, attrs);
  appendChildren(el, children);
  return el;
}

/** Create an SVG element. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  applyAttrs(el, attrs);
  appendChildren(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replaceChildren(el, ...children) {
  clear(el);
  appendChildren(el, children);
  return el;
}

/** A message box for errors / empty states. */
export function messageBox(kind, title, ...body) {
  return h(
    "div",
    { class: ["message", `message-${kind}`], role: kind === "error" ? "alert" : "status", dataset: { message: kind } },
    h("div", { class: "message-title" }, title),
    body.length ? h("div", { class: "message-body" }, ...body) : null,
  );
}

export function spinner(label = "Loading…") {
  return h("div", { class: "loading", role: "status", "aria-live": "polite" }, h("span", { class: "spinner", "aria-hidden": "true" }), label);
}

/** Copy text to the clipboard, with a fallback for frames without clipboard permission. */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (_err) {
    // fall through to the textarea fallback
  }
  const ta = h("textarea", { class: "copy-buffer", "aria-hidden": "true", readonly: true });
  ta.value = text;
  document.body.appendChild(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (_err) {
    ok = false;
  }
  ta.remove();
  return ok;
}

/** A button that copies `text` and briefly says so. */
export function copyButton(text, label = "Copy") {
  const btn = h("button", { type: "button", class: "btn btn-small copy-op", title: "Copy to clipboard", "aria-label": `Copy ${text}` }, label);
  btn.dataset.copy = text;
  btn.addEventListener("click", async (ev) => {
    ev.stopPropagation();
    const ok = await copyText(text);
    btn.textContent = ok ? "Copied" : "Copy failed";
    btn.dataset.copied = ok ? "true" : "false";
    setTimeout(() => {
      btn.textContent = label;
    }, 1500);
  });
  return btn;
}

/** Lazily run `fn(el)` the first time `el` gets near the viewport. */
let lazyObserver = null;
const lazyCallbacks = new WeakMap();
export function whenVisible(el, fn) {
  if (typeof IntersectionObserver === "undefined") {
    fn(el);
    return;
  }
  if (!lazyObserver) {
    lazyObserver = new IntersectionObserver(
      (entries) => {
        for (const entry of entries) {
          if (!entry.isIntersecting) continue;
          const cb = lazyCallbacks.get(entry.target);
          lazyObserver.unobserve(entry.target);
          lazyCallbacks.delete(entry.target);
          lazyElements.delete(entry.target);
          if (cb) cb(entry.target);
        }
      },
      { rootMargin: "200px 0px" },
    );
  }
  lazyCallbacks.set(el, fn);
  lazyElements.add(el);
  lazyObserver.observe(el);
}

const lazyElements = new Set();
/** Stop watching lazily drawn elements that were removed from the page. */
export function forgetDetached() {
  if (!lazyObserver) return;
  for (const el of [...lazyElements]) {
    if (!el.isConnected || !lazyCallbacks.has(el)) {
      lazyObserver.unobserve(el);
      lazyCallbacks.delete(el);
      lazyElements.delete(el);
    }
  }
}
