// Live progress of eval runs: every element with data-status-url (a run's row on the eval page,
// the summary on the run page) asks its run's status.json every 1.5 s until the run ends, and
// shows what it says (status, progress, results per grader, the chart's bars). Text only, never
// HTML: grader names are the person's own text.
(function () {
  "use strict";
  var POLL_MS = 1500;

  function percent(share) {
    return share === null || share === undefined ? "–" : Math.floor(share * 100 + 0.5) + "%";
  }

  function all(root, selector) { return Array.prototype.slice.call(root.querySelectorAll(selector)); }

  function field(root, name) { return root.querySelector('[data-field="' + name + '"]'); }

  function resultsText(counts, share) {
    if (!counts.total) return "–";
    var text = counts.passed + " of " + counts.total + " passed (" + percent(share) + ")";
    return counts.errored ? text + ", " + counts.errored + " errors" : text;
  }

  function apply(root, s) {
    var status = field(root, "status");
    status.textContent = s.status_label + (s.cancel_requested && !s.finished ? " (canceling)" : "");
    status.className = "state state-" + s.status;
    status.dataset.status = s.status;
    var bar = field(root, "bar");
    bar.max = Math.max(s.progress.items, 1);
    bar.value = s.progress.graded;
    field(root, "progress").textContent =
      s.progress.answered + " answered, " + s.progress.graded + " graded of " + s.progress.items;
    var error = field(root, "error");
    error.textContent = s.error;
    error.hidden = !s.error;
    field(root, "results").textContent = resultsText(s.result_counts, s.pass_rate);
    s.criteria.forEach(function (c) {
      all(root, "li[data-criterion]").forEach(function (li) {
        if (li.dataset.criterion !== c.name) return;
        field(li, "criterion-text").textContent =
          c.passed + " passed, " + c.failed + " failed (" + percent(c.pass_rate) + ")";
      });
      all(document, '[data-run="' + s.id + '"][data-criterion]').forEach(function (el) {
        if (el.dataset.criterion !== c.name) return;
        if (el.dataset.field === "meter") el.value = c.pass_rate || 0;
        if (el.dataset.field === "meter-text") el.textContent = percent(c.pass_rate);
      });
    });
    if (s.finished) {
      var cancel = field(root, "cancel");
      if (cancel) cancel.hidden = true;
    }
  }

  function watch(root) {
    var url = root.dataset.statusUrl;
    function poll() {
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 404) return null;  // deleted meanwhile
          if (!response.ok) throw new Error("status " + response.status);
          return response.json();
        })
        .then(function (s) {
          if (s === null) return;
          apply(root, s);
          if (!s.finished) { setTimeout(poll, POLL_MS); return; }
          root.dataset.finished = "true";
          if (root.hasAttribute("data-reload-when-finished")) location.reload();
        })
        .catch(function () { setTimeout(poll, POLL_MS * 2); });  // a restart or a dropped connection
    }
    setTimeout(poll, POLL_MS);
  }

  all(document, "[data-status-url]").forEach(watch);
})();
