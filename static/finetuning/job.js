// The job page: draws the stored picture at once, then applies what the job socket pushes.
(function () {
  "use strict";
  var snapshot = JSON.parse(document.getElementById("job-snapshot").textContent);
  var jobId = snapshot.job.id;
  var points = { step: [], loss: [], evalStep: [], evalLoss: [] };
  var chart = null;
  var lastMetric = 0;
  var lastEvent = 0;

  function el(id) { return document.getElementById(id); }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    seconds = Math.round(seconds);
    if (seconds < 90) return seconds + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function chartData() {
    // One x axis: training steps; validation losses sit at their own steps (null elsewhere).
    var steps = points.step.slice();
    points.evalStep.forEach(function (s) { if (steps.indexOf(s) < 0) steps.push(s); });
    steps.sort(function (a, b) { return a - b; });
    var loss = steps.map(function (s) { var i = points.step.indexOf(s); return i < 0 ? null : points.loss[i]; });
    var evalLoss = steps.map(function (s) { var i = points.evalStep.indexOf(s); return i < 0 ? null : points.evalLoss[i]; });
    return [steps, loss, evalLoss];
  }

  function drawChart() {
    if (!points.step.length && !points.evalStep.length) return;
    el("chart-empty").hidden = true;
    var data = chartData();
    if (chart) { chart.setData(data); return; }
    var width = Math.min(el("chart").clientWidth || 720, 900);
    chart = new uPlot({
      width: width,
      height: 280,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: "loss" }],
      series: [
        { label: "step" },
        { label: "training loss", stroke: "#2563eb", width: 2, spanGaps: true },
        { label: "validation loss", stroke: "#c2410c", width: 2, spanGaps: true, points: { show: true, size: 7 } }
      ]
    }, data, el("chart"));
  }

  function applyJob(job) {
    var state = el("state");
    state.textContent = job.state_label + (job.cancel_requested && !job.finished ? " (cancelling)" : "");
    state.className = "state state-" + job.state;
    state.dataset.state = job.state;
    el("step").textContent = job.total_steps ? "step " + job.step + " / " + job.total_steps + " · epoch " + job.epoch.toFixed(2) : "";
    el("eta").textContent = job.eta_s && !job.finished ? "· about " + duration(job.eta_s) + " left" : "";
    el("speed").textContent = job.tokens_per_s ? "· " + Math.round(job.tokens_per_s) + " tokens/s" : "";
    var phase = job.phase || {};
    el("phase").textContent = phase.name ? phase.name + (phase.total ? ": " + phase.done + " / " + phase.total : "…") : "";
    el("progress").value = job.finished && job.state === "succeeded" ? 1 : job.progress;
    if (job.error) { el("error").textContent = job.error; el("error").hidden = false; }
    if (job.result_model) {
      var link = el("chat-link");
      link.href = link.getAttribute("href").split("?")[0] + "?model=" + encodeURIComponent(job.result_model);
      link.hidden = false;
    }
    if (job.finished && el("cancel-form")) el("cancel-form").hidden = true;
  }

  function apply(data) {
    applyJob(data.job);
    data.metrics.forEach(function (m) {
      lastMetric = Math.max(lastMetric, m.id);
      if (m.loss !== null) {
        // A resumed job trains again from its checkpoint: its later points are replaced.
        while (points.step.length && points.step[points.step.length - 1] >= m.step) { points.step.pop(); points.loss.pop(); }
        points.step.push(m.step); points.loss.push(m.loss);
      }
      if (m.eval_loss !== null) { points.evalStep.push(m.step); points.evalLoss.push(m.eval_loss); }
    });
    var log = el("log");
    data.events.forEach(function (e) {
      lastEvent = Math.max(lastEvent, e.id);
      var li = document.createElement("li");
      li.className = "log-" + e.level;
      var time = document.createElement("time");
      time.textContent = new Date(e.time).toLocaleTimeString();
      li.appendChild(time);
      li.appendChild(document.createTextNode(" " + e.message));
      log.appendChild(li);
    });
    if (data.metrics.length) drawChart();
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + "/ws/finetune/jobs/" + jobId + "/");
    var skipTo = { metric: lastMetric, event: lastEvent };
    socket.onmessage = function (message) {
      var data = JSON.parse(message.data);
      // The socket starts from the beginning: drop what the page already has.
      data.metrics = data.metrics.filter(function (m) { return m.id > skipTo.metric; });
      data.events = data.events.filter(function (e) { return e.id > skipTo.event; });
      apply(data);
      if (data.job.finished && !snapshot.job.finished) {
        snapshot.job.finished = true;
        if (data.job.state === "succeeded") setTimeout(function () { location.reload(); }, 500);
      }
    };
    socket.onclose = function (event) {
      if (event.code === 1000 || event.code === 4404 || event.code === 4401) return;
      setTimeout(connect, 2000);  // dropped: reconnect, the filter above skips what we have
    };
  }

  apply(snapshot);
  if (!snapshot.job.finished) connect();
})();
