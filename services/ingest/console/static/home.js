// The console's home: upload a CSV; the requests, newest first, refreshed while any of them is open.
"use strict";

(() => {
  const {request, json, el, bytes, age, isOpen, badge, savings, consolePath} = pixpress;
  const PAGE = 20;
  const REFRESH_MS = 2000;
  const COLUMNS = ["Status", "Progress", "Images done / failed / total", "Saved", "Age"];
  let shown = PAGE; // how many requests the list holds (grows with "Show older requests")
  let timer = null;

  // --- upload -------------------------------------------------------------------------------------------------
  const form = document.getElementById("upload-form");
  const fileInput = document.getElementById("csv-file");
  const drop = document.getElementById("drop");
  const status = document.getElementById("upload-status");

  function showFileName() {
    const file = fileInput.files[0];
    document.getElementById("drop-name").textContent = file ? "Selected: " + file.name + " (" + bytes(file.size) + ")" : "";
  }

  fileInput.addEventListener("change", showFileName);
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) {
      fileInput.files = event.dataTransfer.files;
      showFileName();
    }
  });

  function showProblems(problem) {
    document.getElementById("problems").hidden = false;
    document.getElementById("problems-title").textContent = problem.title || "The file was refused";
    document.getElementById("problems-detail").textContent = problem.detail || "";
    const rows = (problem.errors || []).map((error) =>
      el("tr", {}, el("td", {}, String(error.row)), el("td", {}, error.column === null ? "–" : error.column),
        el("td", {}, error.message)));
    document.getElementById("problems-rows").replaceChildren(...rows);
    document.getElementById("problems-numbering").textContent = problem.row_numbering || "";
    document.getElementById("problems").querySelector("table").hidden = rows.length === 0;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    document.getElementById("problems").hidden = true;
    const file = fileInput.files[0];
    if (!file) {
      status.textContent = "Choose a CSV file first.";
      fileInput.focus();
      return;
    }
    const body = new FormData();
    body.append("file", file, file.name);
    const webhook = document.getElementById("webhook-url").value.trim();
    if (webhook) {
      body.append("webhook_url", webhook);
    }
    const button = document.getElementById("upload-button");
    button.disabled = true;
    status.textContent = "Uploading " + file.name + "…";
    try {
      const response = await request("/upload", {method: "POST", body});
      const answer = await response.json().catch(() => ({}));
      if (response.ok) {
        status.textContent = "Accepted. Opening the request…";
        location.assign(consolePath(answer.request_id));
        return;
      }
      status.textContent = "Refused (HTTP " + response.status + ").";
      showProblems(answer);
      document.getElementById("problems-title").focus();
    } catch (error) {
      status.textContent = "The upload failed: " + error.message;
    } finally {
      button.disabled = false;
    }
  });

  // --- requests -----------------------------------------------------------------------------------------------
  function requestRow(item) {
    const progress = item.progress;
    const link = el("a", {href: consolePath(item.request_id)}, item.request_id.slice(0, 8));
    link.setAttribute("aria-label", "Request " + item.request_id);
    const statusCell = el("span", {});
    badge(statusCell, item.status);
    const bar = el("progress", {max: 100, value: progress.percent}, progress.percent + " %");
    bar.setAttribute("aria-label", "Request " + item.request_id.slice(0, 8) + " progress");
    const cells = [
      el("td", {}, statusCell),
      el("td", {className: "bar"}, bar, el("span", {className: "hint"}, " " + progress.percent.toFixed(0) + " %")),
      el("td", {}, progress.images_done + " / " + progress.images_failed + " / " + progress.images_total),
      el("td", {}, savings(progress)),
      el("td", {title: item.created_at}, age(item.created_at)),
    ];
    COLUMNS.forEach((label, index) => cells[index].dataset.label = label); // shown as labels at phone width
    return el("tr", {}, el("th", {scope: "row"}, link), ...cells);
  }

  async function load() {
    clearTimeout(timer);
    const listStatus = document.getElementById("requests-status");
    let items = [];
    let next = "/requests?limit=" + Math.min(shown, 100);
    try {
      while (next && items.length < shown) {
        const page = await json(next);
        items = items.concat(page.items);
        next = page.next || null;
      }
    } catch (error) {
      listStatus.textContent = "Could not read the requests: " + error.message;
      timer = setTimeout(load, REFRESH_MS * 5);
      return;
    }
    document.getElementById("requests-rows").replaceChildren(...items.map(requestRow));
    document.getElementById("more").hidden = !next;
    const open = items.filter((item) => isOpen(item.status)).length;
    listStatus.textContent = items.length === 0 ? "No requests yet." :
      open ? open + " open; refreshing every " + REFRESH_MS / 1000 + " s." : "";
    if (open) {
      timer = setTimeout(load, REFRESH_MS);
    }
  }

  document.getElementById("refresh").addEventListener("click", load);
  document.getElementById("more").addEventListener("click", () => {
    shown += PAGE;
    load();
  });
  load();
})();
