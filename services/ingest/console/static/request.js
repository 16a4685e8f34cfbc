// The console's page of one request: live progress (polling), totals, the output CSV, webhook attempts, and the
// products in row order with previews of each image, original beside compressed.
"use strict";

(() => {
  const {request, json, el, bytes, time, isOpen, badge, savings} = pixpress;
  const requestId = document.getElementById("request").dataset.requestId;
  const base = "/requests/" + encodeURIComponent(requestId);
  const POLL_MS = 1000;
  const PRODUCTS_EVERY_MS = 3000; // while the request runs, the products page is read again at most this often
  const PAGE = 10;
  const THUMBS_AT_ONCE = 4;
  const AUTO_FOLLOW = 30; // empty pages of the failed filter followed before asking the user

  // --- previews: fetched with the API key, shown from blob: URLs, a few at a time, only when on screen -----------
  const previews = new Map(); // path -> {url} or {error}
  const waiting = [];
  const inFlight = new Set();
  let fetching = 0;

  function showPreview(img, result) {
    if (result.url) {
      img.src = result.url;
      return;
    }
    const note = el("span", {className: "no-preview"}, "No preview: " + result.error);
    img.replaceWith(note);
  }

  async function fetchPreview(path) {
    try {
      const response = await request(path);
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        return {error: typeof body.detail === "string" ? body.detail : "HTTP " + response.status};
      }
      return {url: URL.createObjectURL(await response.blob())};
    } catch (error) {
      return {error: error.message};
    }
  }

  function pump() {
    while (fetching < THUMBS_AT_ONCE && waiting.length) {
      const {img, path} = waiting.shift();
      if (!img.isConnected) {
        continue;
      }
      const known = previews.get(path);
      if (known) {
        showPreview(img, known);
        continue;
      }
      if (inFlight.has(path)) {
        continue; // its answer fills every <img> showing that path
      }
      inFlight.add(path);
      fetching += 1;
      fetchPreview(path).then((result) => {
        previews.set(path, result);
        inFlight.delete(path);
        fetching -= 1;
        if (img.isConnected) {
          showPreview(img, result);
        }
        for (const other of document.querySelectorAll("img[data-preview]")) {
          if (other !== img && other.dataset.preview === path && !other.getAttribute("src")) {
            showPreview(other, result);
          }
        }
        pump();
      });
    }
  }

  const onScreen = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) {
        onScreen.unobserve(entry.target);
        waiting.push({img: entry.target, path: entry.target.dataset.preview});
      }
    }
    pump();
  }, {rootMargin: "200px"});

  function preview(path, alt) {
    const img = el("img", {alt, width: 120, height: 120, decoding: "async"});
    img.dataset.preview = path;
    const known = previews.get(path);
    if (known && known.url) {
      img.src = known.url;
    } else {
      onScreen.observe(img);
    }
    return img;
  }

  // --- products ------------------------------------------------------------------------------------------------
  const products = {offset: 0, history: [], failed: false, next: null, loadedAt: 0, loading: false};
  // how an output was reused instead of compressed again (the output cache, docs/cache.md)
  const REUSE = {
    revalidated: "unchanged at the host (HTTP 304): not downloaded, not compressed",
    same_bytes: "same bytes as an image compressed before: not compressed again",
  };

  function reuseNote(cache) {
    return el("p", {className: "reuse"}, el("span", {className: "badge reused"}, "reused"), " " +
      (REUSE[cache] || cache));
  }

  function imageItem(product, image) {
    const number = "image " + (image.index + 1) + " of row " + product.row;
    const item = el("li", {className: "image " + image.state});
    const pair = el("div", {className: "pair"});
    if (image.state === "failed") {
      item.append(el("p", {className: "error"}, "Failed: " + image.error));
    } else {
      const original = el("figure", {}, preview(image.thumbnails.original, "Original, " + number),
        el("figcaption", {}, "Original" + (image.format_in ? " · " + image.format_in : "") +
          (image.bytes_in !== null ? " · " + bytes(image.bytes_in) : "")));
      let compressed;
      if (image.state === "done") {
        const saved = image.bytes_in ? " (−" + (100 * (1 - image.bytes_out / image.bytes_in)).toFixed(0) + " %)" : "";
        compressed = el("figure", {}, preview(image.thumbnails.compressed, "Compressed, " + number),
          el("figcaption", {}, "Compressed" + (image.format_out ? " · " + image.format_out : "") + " · " +
            bytes(image.bytes_out) + saved));
      } else {
        compressed = el("figure", {className: "pending"}, el("span", {className: "no-preview"}, "Not compressed yet"),
          el("figcaption", {}, "Compressed"));
      }
      pair.append(original, compressed);
      item.append(pair);
      if (image.state === "done" && image.cache) {
        item.append(reuseNote(image.cache));
      }
    }
    item.append(el("p", {className: "url"}, image.input_url));
    return item;
  }

  function productItem(product) {
    const failed = product.images.filter((image) => image.state === "failed").length;
    const title = el("h3", {}, el("span", {className: "row"}, "Row " + product.row), " ",
      el("span", {className: "serial"}, product.serial_number), " ", el("span", {className: "name"}, product.product_name));
    const facts = product.images.length + " image" + (product.images.length === 1 ? "" : "s") +
      (failed ? ", " + failed + " failed" : "") + (product.pending ? ", " + product.pending + " pending" : "");
    return el("li", {className: "product" + (failed ? " has-failed" : "")}, title,
      el("p", {className: "hint"}, facts), el("ul", {className: "images"}, ...product.images.map((image) =>
        imageItem(product, image))));
  }

  async function loadProducts() {
    if (products.loading) {
      return;
    }
    products.loading = true;
    const note = document.getElementById("products-status");
    try {
      let page = null;
      let offset = products.offset;
      for (let follow = 0; follow <= AUTO_FOLLOW; follow += 1) {
        const query = "?offset=" + offset + "&limit=" + PAGE + (products.failed ? "&failed=true" : "");
        page = await json(base + "/products" + query);
        if (page.items.length || !page.next) {
          break;
        }
        offset = Number(new URL(page.next, location.href).searchParams.get("offset"));
      }
      products.offset = page.offset;
      products.next = page.next || null;
      products.loadedAt = Date.now();
      document.getElementById("products").replaceChildren(...page.items.map(productItem));
      document.getElementById("next-page").disabled = !page.next;
      document.getElementById("first-page").disabled = page.offset === 0;
      document.querySelector(".pager").hidden = !page.next && page.offset === 0;
      if (page.items.length) {
        const first = page.items[0].row;
        const last = page.items[page.items.length - 1].row;
        note.textContent = "Rows " + first + "–" + last + " of " + page.total +
          (products.failed ? " (only products with failed images)" : "") + ".";
      } else if (products.failed) {
        note.textContent = page.next ? "No failed images in the rows searched so far; press Next page to search on." :
          "No failed images" + (page.offset ? " after row " + page.offset : "") + ".";
      } else {
        note.textContent = page.total ? "No products stored yet." : "This request has no products yet.";
      }
    } catch (error) {
      note.textContent = "Could not read the products: " + error.message;
    } finally {
      products.loading = false;
    }
  }

  document.getElementById("only-failed").addEventListener("change", (event) => {
    products.failed = event.target.checked;
    products.offset = 0;
    loadProducts();
  });
  document.getElementById("next-page").addEventListener("click", () => {
    if (products.next) {
      products.offset = Number(new URL(products.next, location.href).searchParams.get("offset"));
      loadProducts();
    }
  });
  document.getElementById("first-page").addEventListener("click", () => {
    products.offset = 0;
    loadProducts();
  });

  // --- the request -------------------------------------------------------------------------------------------------
  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  function showWebhook(webhook) {
    if (!webhook) {
      setText("webhook-summary", "No webhook: the upload named none.");
      return;
    }
    setText("webhook-summary", webhook.target + ": " + webhook.state + " (" + webhook.attempts.length + " attempt" +
      (webhook.attempts.length === 1 ? "" : "s") + ", webhook-id " + webhook.webhook_id + ")");
    document.getElementById("webhook-table").hidden = webhook.attempts.length === 0;
    document.getElementById("webhook-rows").replaceChildren(...webhook.attempts.map((attempt) => el("tr", {},
      el("td", {}, String(attempt.attempt)), el("td", {}, time(attempt.at)),
      el("td", {}, attempt.ok ? "HTTP " + attempt.status_code : (attempt.refused ? "refused: " : "") +
        (attempt.error || "HTTP " + attempt.status_code)),
      el("td", {}, attempt.duration_ms + " ms"))));
  }

  // how many outputs were reused instead of compressed again, and how (docs/cache.md)
  function showReused(progress) {
    const cached = progress.images_cached || 0;
    const revalidated = progress.images_revalidated || 0;
    const kinds = [];
    if (revalidated) {
      kinds.push(revalidated + " unchanged at the host");
    }
    if (cached > revalidated) {
      kinds.push(cached - revalidated + " same bytes as before");
    }
    setText("images-cached", String(cached));
    setText("images-cached-how", kinds.join(", "));
  }

  function showDetail(detail) {
    const progress = detail.progress;
    badge(document.getElementById("status"), detail.status);
    setText("status-hint", isOpen(detail.status) ? "updating live" : "");
    const bar = document.getElementById("progress");
    bar.value = progress.percent;
    bar.textContent = progress.percent + " %";
    setText("images-done", String(progress.images_done));
    setText("images-failed", String(progress.images_failed));
    setText("images-total", String(progress.images_total));
    showReused(progress);
    setText("products-total", String(progress.products_total));
    setText("bytes", bytes(progress.bytes_in) + " → " + bytes(progress.bytes_out));
    setText("savings", savings(progress));
    setText("created", time(detail.created_at));
    setText("updated", time(detail.updated_at));
    const error = document.getElementById("error");
    error.hidden = !detail.error;
    error.textContent = detail.error ? "Failed: " + detail.error : "";
    const link = document.getElementById("download");
    const url = detail.output_csv_url || "";
    link.hidden = !/^https?:\/\//i.test(url);
    if (!link.hidden) {
      link.href = url;
    }
    showWebhook(detail.webhook);
  }

  let settled = -1;
  async function poll() {
    let detail;
    try {
      detail = await json(base);
      setText("load-status", "");
    } catch (error) {
      setText("load-status", "Could not read the request: " + error.message);
      if (error.status !== 404 && error.status !== 400) {
        setTimeout(poll, POLL_MS * 5); // the server may be back soon; an unknown request will not appear
      }
      return;
    }
    showDetail(detail);
    const open = isOpen(detail.status);
    const now = detail.progress.images_settled;
    if (now !== settled && (!open || Date.now() - products.loadedAt >= PRODUCTS_EVERY_MS)) {
      settled = now;
      await loadProducts();
    }
    // the webhook is sent after the request ends and may be retried for minutes: follow it until it is decided
    const webhookOpen = detail.webhook && (detail.webhook.state === "pending" || detail.webhook.state === "retrying");
    if (open || settled !== now) {
      setTimeout(poll, POLL_MS);
    } else if (webhookOpen) {
      setTimeout(poll, POLL_MS * 2);
    }
  }
  poll();
})();
