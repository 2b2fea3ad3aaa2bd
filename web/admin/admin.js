// The admin dashboard's only script (no inline script: the page's CSP allows this file alone).
// Select-all on the quarantine, a confirmation before a rollback, and live job progress.
"use strict";

function selectAll() {
  for (const box of document.querySelectorAll("[data-select-all]")) {
    const name = box.getAttribute("data-select-all");
    box.addEventListener("change", () => {
      for (const item of document.querySelectorAll(`input[name="${name}"]`)) {
        item.checked = box.checked;
      }
    });
  }
}

function confirmations() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  }
}

function jobRow(job) {
  const row = document.createElement("tr");
  row.dataset.job = String(job.id);
  const cells = [];
  for (let i = 0; i < 6; i += 1) {
    cells.push(document.createElement("td"));
    row.append(cells[i]);
  }
  cells[0].className = "num";
  cells[0].textContent = String(job.id);
  cells[1].textContent = job.name;
  const pill = document.createElement("span");
  pill.className = "pill status";
  cells[2].append(pill);
  const bar = document.createElement("progress");
  bar.max = 100;
  const stage = document.createElement("span");
  stage.className = "stage";
  cells[3].append(bar, " ", stage);
  cells[4].className = "hint";
  cells[4].textContent = `${job.requested_by} (${job.trigger})`;
  cells[5].className = "result";
  return row;
}

function showJob(row, job) {
  const pill = row.querySelector(".status");
  pill.textContent = job.status;
  pill.dataset.status = job.status;
  const percent = Math.max(0, Math.min(100, Number(job.percent) || 0));
  const bar = row.querySelector("progress");
  bar.value = percent;
  // A job that ended keeps no progress bar: where it stopped, in words.
  const ended = { published: "done", refused: "stopped at the gate", failed: "failed" };
  bar.hidden = job.status in ended;
  let stage = job.stage || "";
  if (job.epoch) stage += ` · epoch ${job.epoch}/${job.epochs}`;
  if (job.status === "failed" && job.stage) stage = `failed while ${job.stage}`;
  else if (job.status in ended) stage = ended[job.status];
  else stage = `${stage} · ${Math.round(percent)}%`;
  row.querySelector(".stage").textContent = stage;
  row.querySelector(".result").textContent = `${job.version || ""} ${job.reason || ""}`.trim();
}

function liveJobs() {
  const live = document.getElementById("jobs-live");
  const body = document.querySelector("#jobs tbody");
  if (!live || !body) return;
  const url = live.dataset.url;
  let failures = 0;
  async function poll() {
    try {
      const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401) {
        live.textContent = "Signed out: sign in again to see progress.";
        return;
      }
      const data = await answer.json();
      failures = 0;
      const seen = new Set();
      for (const job of data.jobs) {
        let row = body.querySelector(`tr[data-job="${Number(job.id)}"]`);
        if (!row) {
          row = jobRow(job);
          body.prepend(row);
        }
        showJob(row, job);
        seen.add(String(job.id));
      }
      const none = body.querySelector("tr.none");
      if (none && seen.size) none.remove();
      live.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
    } catch (error) {
      failures += 1;
      live.textContent = "The server does not answer; trying again.";
    }
    window.setTimeout(poll, failures ? 5000 : 2000);
  }
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  selectAll();
  confirmations();
  liveJobs();
});
