// Celeriac console: draws the charts whose data the server put in
// <script type="application/json"> blocks (uPlot), on load and after every htmx swap.
// No inline script anywhere: the Content-Security-Policy allows only files from here.
(function () {
  "use strict";

  var COLORS = { line: "#3366aa", anomaly: "#c0392b", bar: "#2e8b57" };

  function readData(el) {
    var block = document.getElementById(el.id + "-data");
    return block ? JSON.parse(block.textContent) : null;
  }

  function anomaliesChart(el, data, labels) {
    var series = [{}];
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

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document);
    wireBuilder();
    document.body.addEventListener("htmx:afterSettle", function (event) {
      drawCharts(event.target);
    });
  });
})();
