// The review app's keys and its upload form. Same-origin requests only; every value shown is set as text.
"use strict";

(function () {
  function typing(event) {
    const target = event.target;
    return target && (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName));
  }

  function follow(id) {
    const link = document.getElementById(id);
    if (link && link.href) {
      window.location.assign(link.href);
    }
  }

  function press(id) {
    const button = document.getElementById(id);
    if (button) {
      button.click();
    }
  }

  const CASE_KEYS = {
    j: () => follow("next"), ArrowRight: () => follow("next"),
    k: () => follow("prev"), ArrowLeft: () => follow("prev"),
    c: () => press("verdict-confirmed"), d: () => press("verdict-dismissed"),
    u: () => press("verdict-unsure"), r: () => press("verdict-reopened"),
    Escape: () => follow("worklist"),
    1: () => press("corrected_class-glioma"), 2: () => press("corrected_class-meningioma"),
    3: () => press("corrected_class-notumor"), 4: () => press("corrected_class-pituitary"),
  };

  function moveInList(step) {
    const links = Array.from(document.querySelectorAll("#worklist a.case-link"));
    if (!links.length) {
      return;
    }
    const index = links.indexOf(document.activeElement);
    const next = links[Math.max(0, Math.min(links.length - 1, index < 0 ? 0 : index + step))];
    document.querySelectorAll("#worklist tr.current").forEach((row) => row.classList.remove("current"));
    next.closest("tr").classList.add("current");
    next.focus();
  }

  const LIST_KEYS = {
    j: () => moveInList(1), ArrowDown: () => moveInList(1),
    k: () => moveInList(-1), ArrowUp: () => moveInList(-1),
  };

  document.addEventListener("keydown", (event) => {
    if (typing(event) || event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    const keys = document.getElementById("state") ? CASE_KEYS : LIST_KEYS;
    const action = keys[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    row.appendChild(td);
  }

  function fixed(value) {
    return typeof value === "number" ? value.toFixed(3) : value;
  }

  function table(headings, rows) {
    const element = document.createElement("table");
    const head = document.createElement("tr");
    headings.forEach((heading) => {
      const th = document.createElement("th");
      th.textContent = heading;
      head.appendChild(th);
    });
    element.appendChild(head);
    rows.forEach((values) => {
      const row = document.createElement("tr");
      values.forEach((value) => cell(row, value));
      element.appendChild(row);
    });
    return element;
  }

  function outcome(image) {
    if (image.status !== "ok") {
      return image.error_code || image.skip_reason || image.status;
    }
    if (image.unfamiliar) {
      return "unfamiliar";
    }
    return image.flagged ? "flagged" : "not flagged";
  }

  function show(result, answer) {
    result.replaceChildren();
    const summary = document.createElement("p");
    summary.id = "upload-summary";
    summary.textContent = `Model ${answer.model_version} (${answer.backend}), flagging at tumor probability ≥ ` +
      `${answer.threshold.toFixed(2)}.`;
    result.appendChild(summary);
    if (answer.series.length) {
      result.appendChild(table(["series slices", "tumor probability", "class", "deciding slice", "outcome"],
        answer.series.map((series) => [series.slices, fixed(series.tumor_probability), series.predicted_class,
          series.deciding_slice, series.flagged === null ? "not decided" : (series.flagged ? "flagged" : "not flagged")])));
    }
    const images = table(["file", "frame", "tumor probability", "class", "unfamiliarity", "outcome"],
      answer.images.map((image) => [image.file, image.frame, fixed(image.tumor_probability), image.predicted_class,
        fixed(image.unfamiliarity), outcome(image)]));
    images.id = "upload-images";
    result.appendChild(images);
  }

  async function upload(event) {
    event.preventDefault();
    const file = document.getElementById("upload-file").files[0];
    const result = document.getElementById("upload-result");
    if (!file) {
      result.textContent = "Choose a file first.";
      return;
    }
    result.textContent = "Scoring…";
    const response = await fetch(`/api/score?name=${encodeURIComponent(file.name)}`, {
      method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"},
    });
    const answer = await response.json();
    if (!response.ok) {
      result.textContent = answer.detail || `Not scored (${response.status}).`;
      return;
    }
    show(result, answer);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("upload");
    if (form) {
      form.addEventListener("submit", upload);
    }
  });
})();
