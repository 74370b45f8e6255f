// Draws the charts of a Tidewatch page from the JSON in #tw-data with uPlot.
// When done it records on <body> how many charts were drawn and how many
// data points they hold (data-charts-drawn, data-points), and the errors
// seen since the page started (data-errors), for the browser test.
(function () {
  "use strict";
  var drawn = 0;
  var points = 0;

  function finish() {
    document.body.dataset.chartsDrawn = String(drawn);
    document.body.dataset.points = String(points);
    document.body.dataset.errors = String((window.twErrors || []).length);
    if ((window.twErrors || []).length) {
      document.body.dataset.errorText = window.twErrors.join(" | ");
    }
  }

  function count(values) {
    var n = 0;
    for (var i = 0; i < values.length; i++) {
      if (values[i] !== null && values[i] !== undefined && isFinite(values[i])) n++;
    }
    return n;
  }

  function draw(element, spec) {
    var width = Math.max(280, element.clientWidth || 420);
    var data = [spec.x];
    var series = [{}];
    spec.series.forEach(function (s) {
      data.push(s.values);
      points += count(s.values);
      var options = { label: s.label, stroke: s.color, width: 2, spanGaps: false };
      if (s.dash) options.dash = [6, 4];
      if (spec.kind === "bars") {
        options.fill = s.color;
        options.width = 0;
        options.paths = uPlot.paths.bars({ size: [0.4, 40], align: s.label === "reference" ? -1 : 1 });
        options.points = { show: false };
      }
      series.push(options);
    });
    var axes;
    if (spec.kind === "bars") {
      axes = [{ values: function (u, splits) { return splits.map(function (i) { return spec.labels[i] || ""; }); }, rotate: -30, size: 60 }, {}];
    } else if (spec.kind === "quantile") {
      axes = [{ label: "quantile" }, {}];
    } else {
      axes = [{}, {}];
    }
    var options = {
      title: spec.title,
      width: width,
      height: 220,
      series: series,
      axes: axes,
      scales: { x: { time: spec.kind === "time" } },
      // Times in UTC, like the heatmap.
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); }
    };
    if (spec.kind === "bars") {
      options.scales.x.range = function () { return [-0.5, spec.labels.length - 0.5]; };
      options.scales.y = { range: function (u, min, max) { return [0, Math.max(max, 0.01) * 1.1]; } };
    }
    new uPlot(options, data, element);
    drawn++;
  }

  try {
    var source = document.getElementById("tw-data");
    if (source) {
      var data = JSON.parse(source.textContent);
      var elements = document.querySelectorAll("[data-chart]");
      for (var i = 0; i < elements.length; i++) {
        var spec = data.charts[Number(elements[i].dataset.chart)];
        if (spec) draw(elements[i], spec);
      }
    }
  } catch (error) {
    (window.twErrors = window.twErrors || []).push(String(error && error.stack || error));
  }
  finish();
})();
