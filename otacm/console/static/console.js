// The console's progressive enhancement. Every page works without it: charts have tables
// beside them, uploads are plain form posts, live sections have a reload link.
(function () {
  "use strict";

  const PALETTE = ["#1f77b4", "#2e8540", "#c0392b", "#6f5bb5", "#b7950b", "#8a94a3", "#d35400",
                   "#16a085", "#7f8c8d", "#8e44ad", "#2c3e50", "#e67e22", "#27ae60", "#95a5a6"];
  const charts = new Map();

  function spec(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function datasets(s) {
    return s.series.map(function (serie, i) {
      const colour = serie.color || PALETTE[i % PALETTE.length];
      return {
        label: serie.label, data: serie.data, backgroundColor: s.type === "doughnut"
          ? s.series[0].colors || PALETTE : colour,
        borderColor: colour, fill: !!s.fill, pointRadius: s.type === "line" ? 0 : undefined,
        borderWidth: s.type === "line" ? 1.5 : 0, tension: 0,
      };
    });
  }

  function options(s) {
    const stacked = !!s.stacked;
    const opts = {
      responsive: true, maintainAspectRatio: false, animation: false,
      indexAxis: s.horizontal ? "y" : "x",
      plugins: { legend: { position: "bottom" } },
    };
    if (s.type !== "doughnut") {
      opts.scales = {
        x: { stacked: stacked, title: { display: !!s.xTitle, text: s.xTitle || "" } },
        y: { stacked: stacked, beginAtZero: true, title: { display: !!s.yTitle, text: s.yTitle || "" } },
      };
    }
    return opts;
  }

  function draw(canvas) {
    if (typeof window.Chart === "undefined") return;
    const drawn = charts.get(canvas.id);
    if (drawn && drawn.canvas === canvas) return;
    if (drawn) drawn.destroy();  // its canvas was replaced by a newer copy of the section
    const s = spec(canvas.dataset.chart);
    if (!s) return;
    const chart = new window.Chart(canvas, {
      type: s.type, data: { labels: s.labels, datasets: datasets(s) }, options: options(s),
    });
    charts.set(canvas.id, chart);
  }

  // A live section was replaced: its chart data moves into the chart already on the page.
  function refresh(root) {
    root.querySelectorAll("script[data-updates-chart]").forEach(function (node) {
      const chart = charts.get(node.dataset.updatesChart);
      if (!chart) return;
      const s = JSON.parse(node.textContent);
      chart.data.labels = s.labels;
      s.series.forEach(function (serie, i) {
        if (chart.data.datasets[i]) chart.data.datasets[i].data = serie.data;
      });
      chart.update();
    });
  }

  function drawAll(root) {
    root.querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  // Uploads with a progress bar: the same form post, sent by XMLHttpRequest so that its
  // upload progress can be shown. The answer replaces the page as a normal post would.
  function enhanceUploads(root) {
    root.querySelectorAll("form[data-upload]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.FormData || !window.XMLHttpRequest) return;
        event.preventDefault();
        const bar = form.querySelector("progress");
        const status = form.querySelector("[data-upload-status]");
        const button = form.querySelector("button[type=submit]");
        const xhr = new XMLHttpRequest();
        xhr.open("POST", form.action);
        xhr.upload.addEventListener("progress", function (e) {
          if (!e.lengthComputable || !bar) return;
          bar.hidden = false;
          bar.max = e.total;
          bar.value = e.loaded;
          if (status) status.textContent = "Uploading: " + Math.round(100 * e.loaded / e.total) + " %";
        });
        xhr.upload.addEventListener("load", function () {
          if (status) status.textContent = form.dataset.upload || "Processing…";
        });
        xhr.addEventListener("load", function () {
          if (xhr.status < 400 && xhr.responseURL) {
            window.location.assign(xhr.responseURL);
            return;
          }
          const page = new DOMParser().parseFromString(xhr.responseText, "text/html");
          const main = page.querySelector("main");
          if (main) {
            document.querySelector("main").replaceWith(main);
            init(main);
            main.focus();
          } else if (status) {
            status.textContent = "The upload failed (" + xhr.status + ").";
          }
        });
        xhr.addEventListener("error", function () {
          if (status) status.textContent = "The upload was interrupted; try again.";
          if (button) button.disabled = false;
        });
        if (button) button.disabled = true;
        xhr.send(new FormData(form));
      });
    });
  }

  // A table wider than the window scrolls sideways: keyboard users reach it with Tab and
  // scroll it with the arrow keys; screen readers hear what it holds.
  function scrollableTables(root) {
    root.querySelectorAll(".table-wrap").forEach(function (wrap) {
      if (wrap.scrollWidth > wrap.clientWidth) {
        if (!wrap.hasAttribute("tabindex")) {
          wrap.tabIndex = 0;
          wrap.setAttribute("role", "region");
          const box = wrap.closest("section, details");
          const named = wrap.querySelector("caption") || (box && box.querySelector("h2, h3, summary"));
          wrap.setAttribute("aria-label", (named ? named.textContent.trim() + ", " : "") +
                            "table, scrolls sideways");
        }
      } else if (wrap.getAttribute("role") === "region") {
        wrap.removeAttribute("tabindex");
        wrap.removeAttribute("role");
        wrap.removeAttribute("aria-label");
      }
    });
  }

  function init(root) {
    drawAll(root);
    enhanceUploads(root);
    scrollableTables(root);
    root.querySelectorAll("[data-js-only]").forEach(function (n) { n.hidden = false; });
    root.querySelectorAll("[data-no-js]").forEach(function (n) { n.hidden = true; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    document.body.addEventListener("htmx:configRequest", function (event) {
      const token = document.querySelector('meta[name="csrf-token"]');
      if (token) event.detail.headers["X-CSRF-Token"] = token.content;
    });
    // After any swap settles: new canvases are drawn, live data moves into existing charts.
    document.body.addEventListener("htmx:afterSettle", function () {
      drawAll(document);
      refresh(document);
      scrollableTables(document);
    });
    window.addEventListener("resize", function () { scrollableTables(document); });
  });

  // For the browser tests and the curious: every chart drawn, by canvas id.
  window.otacmCharts = charts;
})();
