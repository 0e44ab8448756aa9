/* tollway console: draws the usage charts (uPlot) from the page's JSON and
   polls the same JSON for live updates. No inline script (CSP: script-src 'self'). */
(function () {
  "use strict";
  var COLORS = { requests: "#2f6fed", errors: "#d64545", tokens: "#7c4dff", cost: "#c77d00",
                 subscriptions: "#1f9d55", metered: "#2f6fed", x402: "#9c27b0" };
  var charts = [];
  var timer = null;

  function usd(micros) {
    var neg = micros < 0; micros = Math.abs(micros);
    var whole = Math.floor(micros / 1e6), frac = String(micros % 1e6).padStart(6, "0");
    return (neg ? "-$" : "$") + whole + "." + frac;
  }
  function num(n) { return Number(n).toLocaleString("en-US"); }

  function build(fig, data) {
    var names = fig.dataset.series.split(",");
    var money = fig.dataset.money === "1";
    var series = [{}].concat(names.map(function (n) {
      return { label: n, stroke: COLORS[n] || "#555", width: 2,
               value: function (u, v) { return v == null ? "" : money ? "$" + (v / 1e6).toFixed(4) : num(v); } };
    }));
    var opts = {
      width: Math.max(fig.clientWidth - 20, 300), height: 200, series: series,
      axes: [{}, { values: function (u, vals) { return vals.map(function (v) { return money ? "$" + (v / 1e6).toFixed(2) : num(v); }); }, size: 70 }],
    };
    var u = new uPlot(opts, rows(names, data), fig);
    fig.dataset.drawn = "1";
    return { fig: fig, names: names, u: u };
  }
  function rows(names, data) {
    return [data.hours].concat(names.map(function (n) { return data.series[n]; }));
  }
  function totals(data) {
    document.querySelectorAll("[data-total]").forEach(function (el) {
      var v = data.totals[el.dataset.total];
      if (v !== undefined) el.textContent = el.dataset.money === "1" ? usd(v) : num(v);
    });
  }
  function table(id, key, rows, link) {
    var body = document.querySelector("#" + id + " tbody");
    if (!body || !rows.length) return;
    body.replaceChildren.apply(body, rows.map(function (r) {
      var tr = document.createElement("tr");
      [r[key], num(r.requests), num(r.tokens), usd(r.cost), num(r.errors)].forEach(function (v, i) {
        var td = document.createElement("td");
        if (i === 0 && link) {
          var a = document.createElement("a");
          a.href = link + encodeURIComponent(v); a.textContent = v; td.appendChild(a);
        } else { td.textContent = v; }
        tr.appendChild(td);
      });
      return tr;
    }));
  }
  function init(root) {
    var src = document.getElementById("console-data");
    if (!src || !window.uPlot) return;
    var data = JSON.parse(src.textContent);
    charts.forEach(function (c) { c.u.destroy(); });
    charts = [];
    document.querySelectorAll("figure.chart").forEach(function (fig) { charts.push(build(fig, data)); });
    if (timer) clearInterval(timer);
    var ms = parseInt(document.body.dataset.liveMs || "5000", 10);
    timer = setInterval(function () {
      if (!document.getElementById("console-data")) { clearInterval(timer); timer = null; return; }
      fetch(src.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (!d) return;
          charts.forEach(function (c) { c.u.setData(rows(c.names, d)); });
          totals(d);
          table("by-model", "model", d.by_model, null);
          table("by-customer", "customer_id", d.by_customer, "/console/customers/");
          document.body.dataset.updated = String(Date.now());
        })
        .catch(function () {});
    }, ms);
  }
  function start() {
    if (window.htmx) { window.htmx.onLoad(init); } else { init(document); }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
