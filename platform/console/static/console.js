// Celeriac console: draws the charts whose data the server put in data-series attributes
// (uPlot), on load and after every htmx swap (htmx drops <script> blocks from swapped
// content when allowScriptTags is off, so the data travels in an attribute).
// No inline script anywhere: the Content-Security-Policy allows only files from here.
(function () {
  "use strict";

  var COLORS = { line: "#3366aa", anomaly: "#c0392b", bar: "#2e8b57" };

  function readData(el) {
    return el.dataset.series ? JSON.parse(el.dataset.series) : null;
  }

  function anomaliesChart(el, data, labels) {
    var series = [{ label: "row" }];
    if (data.length === 3) {
      series.push({ label: labels[0], stroke: COLORS.line, width: 1, points: { show: false } });
      series.push({
        label: labels[1], stroke: COLORS.anomaly, paths: function () { return null; },
        points: { show: true, size: 9, fill: COLORS.anomaly, stroke: COLORS.anomaly }
      });
    } else {
      series.push({
        label: labels[0], stroke: COLORS.anomaly, paths: function () { return null; },
        points: { show: true, size: 7, fill: COLORS.anomaly }
      });
    }
    return {
      width: Math.max(320, el.clientWidth), height: 240, series: series,
      scales: { x: { time: false } },
      axes: [{ label: "row" }, {}]
    };
  }

  function usageChart(el, data, labels) {
    return {
      width: Math.max(320, el.clientWidth), height: 180,
      series: [{}, {
        label: labels[0], stroke: COLORS.bar, fill: "rgba(46,139,87,0.35)",
        paths: uPlot.paths.bars({ size: [0.6, 40] }), points: { show: false }
      }],
      axes: [{}, {}]
    };
  }

  var BUILDERS = { anomalies: anomaliesChart, usage: usageChart };

  function drawCharts(root) {
    if (typeof uPlot === "undefined") { return; }
    var charts = (root || document).querySelectorAll("[data-chart]");
    charts.forEach(function (el) {
      if (el.dataset.drawn) { return; }
      var data = readData(el);
      var build = BUILDERS[el.dataset.chart];
      if (!data || !build) { return; }
      var labels = JSON.parse(el.dataset.labels || "[]");
      new uPlot(build(el, data, labels), data, el);
      el.dataset.drawn = "1";
    });
  }

  // The pipeline builder: ticking a plugin chooses "build one".
  function wireBuilder() {
    var custom = document.getElementById("mode-custom");
    if (!custom) { return; }
    document.querySelectorAll("input[name=dataset], input[name=analyzer]").forEach(function (box) {
      box.addEventListener("change", function () { if (box.checked) { custom.checked = true; } });
    });
  }

  // Live updates come from the job event stream (htmx's SSE extension: sse-connect on the
  // page, hx-trigger="sse:changed" on the fragment to re-read). While a page's stream is
  // down (an error, or no EventSource at all), its live fragments (data-live: a job that
  // has not ended) poll instead: a "poll" event every data-poll-ms, until the stream
  // opens again or the fragment comes back ended.
  function streamDown(el) {
    var source = el.closest("[sse-connect]");
    return typeof EventSource === "undefined" || !source || source.dataset.sseDown === "1";
  }

  function pollWhileDown() {
    var every = parseInt(document.body.dataset.pollMs || "2000", 10);
    window.setInterval(function () {
      document.querySelectorAll("[data-live]").forEach(function (el) {
        // The element that re-reads is the stream's (the job page) or the fragment itself.
        if (streamDown(el)) { htmx.trigger(el.closest("[hx-get]") || el, "poll"); }
      });
    }, every);
    document.body.addEventListener("htmx:sseError", function (evt) {
      evt.target.dataset.sseDown = "1";
    });
    document.body.addEventListener("htmx:sseOpen", function (evt) {
      delete evt.target.dataset.sseDown;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document);
    wireBuilder();
    if (typeof htmx !== "undefined") { pollWhileDown(); }
    // After a swap the new content may hold charts (outerHTML swaps replace the target,
    // so the whole document is searched; drawn charts are marked and skipped).
    document.body.addEventListener("htmx:afterSettle", function () { drawCharts(document); });
  });
})();
