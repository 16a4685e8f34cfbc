// pixpress console: what every page shares. Talks to this server's API only, with the API key when it needs one.
// Everything from the API is put into the page as text (textContent, attributes of our choosing): never as markup.
"use strict";

const pixpress = (() => {
  const KEY_STORE = "pixpress-api-key";
  let keyWanted = null; // a promise while the key form is open, so concurrent calls wait for one answer

  function storedKey() {
    return sessionStorage.getItem(KEY_STORE);
  }

  function showForget() {
    document.getElementById("forget-key").hidden = storedKey() === null;
  }

  function askForKey(text) {
    if (keyWanted !== null) {
      return keyWanted;
    }
    const form = document.getElementById("key-form");
    const input = document.getElementById("key-input");
    document.getElementById("key-message").textContent = text;
    form.hidden = false;
    input.focus();
    keyWanted = new Promise((resolve) => {
      form.addEventListener("submit", function onSubmit(event) {
        event.preventDefault();
        if (!input.value) {
          return;
        }
        form.removeEventListener("submit", onSubmit);
        sessionStorage.setItem(KEY_STORE, input.value);
        input.value = "";
        form.hidden = true;
        keyWanted = null;
        showForget();
        resolve();
      });
    });
    return keyWanted;
  }

  // fetch() against this server with X-API-Key; a 401 asks for the key (again) and repeats the call.
  async function request(path, options = {}) {
    for (;;) {
      const key = storedKey();
      const headers = Object.assign({}, options.headers || {}, key ? {"X-API-Key": key} : {});
      const response = await fetch(path, Object.assign({}, options, {headers, credentials: "omit"}));
      if (response.status !== 401) {
        return response;
      }
      await askForKey(key ? "That key was refused; type it again." : "This server needs an API key.");
    }
  }

  async function json(path) {
    const response = await request(path);
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : "HTTP " + response.status;
      throw Object.assign(new Error(detail), {status: response.status});
    }
    return body;
  }

  // Builds an element: el("td", {className: "x"}, "text", childNode, ...). Strings become text nodes.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) {
      if (child === null || child === undefined) {
        continue;
      }
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
    return node;
  }

  function bytes(count) {
    if (count === null || count === undefined) {
      return "–";
    }
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = count;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + " " + units[unit];
  }

  function age(iso) {
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) return Math.floor(seconds) + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }

  function time(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  function isOpen(status) {
    return status === "Queued" || status === "Processing";
  }

  function badge(node, status) {
    node.textContent = status;
    node.className = "badge " + String(status).toLowerCase();
  }

  function savings(progress) {
    if (progress.savings_percent === null || progress.savings_percent === undefined) {
      return "–";
    }
    return bytes(progress.bytes_in - progress.bytes_out) + " (" + progress.savings_percent.toFixed(1) + " %)";
  }

  function consolePath(requestId) {
    return "/console/requests/" + encodeURIComponent(requestId);
  }

  document.addEventListener("DOMContentLoaded", () => {
    showForget();
    document.getElementById("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      showForget();
      location.reload();
    });
  });

  return {request, json, el, bytes, age, time, isOpen, badge, savings, consolePath};
})();
