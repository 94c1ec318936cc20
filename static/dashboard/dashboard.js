// The usage dashboard: fetches the period's numbers (dashboard/report.py) and draws them with
// uPlot, with the same numbers in tables below the charts.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("dashboard-config").textContent);
  var COLORS = ["#2563eb", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];

  function el(id) { return document.getElementById(id); }

  function color(i) { return COLORS[i % COLORS.length]; }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 0 : digits });
  }

  function pct(value) { return value === null || value === undefined ? null : value * 100; }

  function width(container) { return Math.min(container.clientWidth || 900, 960); }

  function lineChart(id, xs, series, yLabel) {
    var container = el(id);
    var opts = {
      width: width(container),
      height: 260,
      axes: [{}, { label: yLabel }],
      series: [{ label: "day" }].concat(series.map(function (s, i) {
        return { label: s.label, stroke: color(i), width: 2, points: { show: xs.length < 40 } };
      }))
    };
    return new uPlot(opts, [xs].concat(series.map(function (s) { return s.values; })), container);
  }

  function barChart(id, xLabel, labels, values, yLabel, range) {
    var container = el(id);
    var xs = labels.map(function (_, i) { return i; });
    var opts = {
      width: width(container),
      height: 240,
      scales: { x: { time: false, range: [-0.5, labels.length - 0.5] }, y: range ? { range: range } : {} },
      axes: [
        { splits: function () { return xs; }, values: function (u, splits) { return splits.map(function (i) { return labels[i] || ""; }); } },
        { label: yLabel }
      ],
      series: [
        { label: xLabel, value: function (u, i) { return i === null ? "" : labels[i]; } },
        { label: yLabel, stroke: color(0), fill: "rgba(37, 99, 235, 0.35)", width: 1, paths: uPlot.paths.bars({ size: [0.6, 80] }), points: { show: false } }
      ]
    };
    return new uPlot(opts, [xs, values], container);
  }

  function cell(row, text, numeric) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    row.appendChild(td);
  }

  function fillTables(data) {
    var models = el("models-rows");
    models.textContent = "";
    data.models.forEach(function (m) {
      var tr = document.createElement("tr");
      cell(tr, m.name);
      cell(tr, fmt(m.totals.replies), true);
      cell(tr, fmt(m.totals.failed_replies), true);
      cell(tr, fmt(m.totals.prompt_tokens), true);
      cell(tr, fmt(m.totals.completion_tokens), true);
      cell(tr, [m.ttft_ms.p50, m.ttft_ms.p90, m.ttft_ms.p99].map(function (v) { return fmt(v); }).join(" / "), true);
      cell(tr, [m.tokens_per_s.p50, m.tokens_per_s.p90, m.tokens_per_s.p99].map(function (v) { return fmt(v, 1); }).join(" / "), true);
      cell(tr, m.feedback.up + " / " + m.feedback.down + " (" + fmt(m.feedback.score, 2) + ")", true);
      models.appendChild(tr);
    });
    var days = el("days-rows");
    days.textContent = "";
    data.days.forEach(function (day, i) {
      var tokens = data.models.reduce(function (sum, m) { return sum + m.tokens[i]; }, 0);
      var tr = document.createElement("tr");
      cell(tr, day);
      cell(tr, fmt(data.messages[i]), true);
      cell(tr, fmt(data.user_messages[i]), true);
      cell(tr, fmt(tokens), true);
      cell(tr, fmt(data.latency.ttft_ms.p50[i]), true);
      cell(tr, fmt(data.latency.tokens_per_s.p50[i], 1), true);
      cell(tr, fmt(data.moderation.flagged[i]), true);
      cell(tr, fmt(data.moderation.blocked[i]), true);
      days.appendChild(tr);
    });
    var jobs = el("jobs-rows");
    jobs.textContent = "";
    data.jobs.forEach(function (j) {
      var tr = document.createElement("tr");
      cell(tr, j.label);
      cell(tr, fmt(j.count), true);
      jobs.appendChild(tr);
    });
  }

  function draw(data) {
    var xs = data.days.map(function (day) { return Date.parse(day + "T00:00:00Z") / 1000; });
    var latency = data.latency;
    var rated = data.models.filter(function (m) { return m.feedback.score !== null; });
    var jobCount = data.jobs.reduce(function (sum, j) { return sum + j.count; }, 0);
    el("empty").hidden = !data.empty;
    if (!data.empty) {
      el("message-charts").hidden = false;
      var replying = data.models.filter(function (m) { return m.totals.replies > 0; });
      lineChart("chart-messages", xs, [{ label: "people's messages", values: data.user_messages }].concat(
        replying.map(function (m) { return { label: "replies · " + m.name, values: m.replies }; })), "messages");
      lineChart("chart-tokens", xs, replying.map(function (m) { return { label: m.name, values: m.tokens }; }), "tokens");
      lineChart("chart-ttft", xs, ["p50", "p90", "p99"].map(function (q) { return { label: q, values: latency.ttft_ms[q] }; }), "ms");
      lineChart("chart-tps", xs, ["p50", "p90", "p99"].map(function (q) { return { label: q, values: latency.tokens_per_s[q] }; }), "tokens/s");
      lineChart("chart-moderation", xs, [
        { label: "flagged %", values: data.moderation.flagged_rate.map(pct) },
        { label: "blocked %", values: data.moderation.blocked_rate.map(pct) }
      ], "% of messages");
    }
    if (rated.length) {
      el("feedback-section").hidden = false;
      barChart("chart-feedback", "model", rated.map(function (m) { return m.name; }), rated.map(function (m) { return m.feedback.score; }), "score", [-1, 1]);
    }
    if (jobCount) {
      el("jobs-section").hidden = false;
      barChart("chart-jobs", "state", data.jobs.map(function (j) { return j.label; }), data.jobs.map(function (j) { return j.count; }), "jobs");
    }
    if (!data.empty || rated.length || jobCount) {
      el("tables").hidden = false;
      fillTables(data);
    }
    el("status").textContent = data.refreshed_at
      ? "Counted through " + new Date(data.refreshed_at).toLocaleString() + " (UTC days)."
      : "Nothing counted yet.";
  }

  fetch(config.data_url + "?days=" + config.days, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (response) {
      if (!response.ok) throw new Error("the dashboard's data answered " + response.status);
      return response.json();
    })
    .then(draw)
    .catch(function (error) {
      el("status").textContent = "Could not load the numbers: " + error.message;
      console.error(error);
    });
})();
