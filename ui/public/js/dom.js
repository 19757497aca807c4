// A small element builder: h("button", {class: "primary", onclick}, "Train").

export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else if (k === "value") e.value = v;
    else if (k === "checked") e.checked = Boolean(v);
    // Through the CSSOM: the CSP refuses style attributes (no 'unsafe-inline').
    else if (k === "style" && typeof v === "object") Object.assign(e.style, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// An error box with the message and what to do.
export function errorBox(text) {
  return h("div", { class: "error", role: "alert" }, text);
}

export function statusBadge(status) {
  return h("span", { class: `badge badge-${status}`, "data-status": status }, status);
}
