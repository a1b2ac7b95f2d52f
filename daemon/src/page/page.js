// Live updates for the clustd status page: the table is re-drawn from each `cluster` event
// of /events; `role`, `health` and `peer` events go to the history list.
(function () {
  "use strict";
  var esc = function (s) {
    return String(s === null || s === undefined ? "-" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  };
  var ms = function (v) {
    if (v === null || v === undefined) return "-";
    if (v < 1000) return v + " ms";
    var s = v / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " m " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " m";
  };
  var health = function (n) {
    if (n.maintenance === null || n.maintenance === undefined) return "-";
    if (n.maintenance) return "maintenance";
    if (n.witness) return "witness";
    if (n.healthy === false) return "UNHEALTHY";
    if (n.eligible === false) return "not eligible";
    return "healthy";
  };
  var heard = function (n) {
    if (n.this_node) return "this node";
    if (n.last_heard_ms_ago === null || n.last_heard_ms_ago === undefined) return "never";
    return (n.heard ? "" : "NOT HEARD for ") + ms(n.last_heard_ms_ago) + (n.heard ? " ago" : "");
  };
  var drivers = function (n) {
    if (!n.drivers.length) return "-";
    return n.drivers.map(function (d) {
      return d.id + " " + (d.role || "-") + ": " + (d.last_result || "-") +
        (d.stop_failed ? " STOP FAILED" : d.connected ? "" : " (gone)");
    }).join("; ");
  };
  var draw = function (view) {
    document.getElementById("master").textContent = view.master || "NONE";
    document.getElementById("master").className = view.master ? "ok" : "bad";
    document.getElementById("from").textContent = view.from;
    var rows = view.nodes.map(function (n) {
      var cls = n.role === "master" ? "master" : n.heard ? "" : "unheard";
      return '<tr data-node="' + esc(n.id) + '" class="' + cls + '">' +
        "<td>" + esc(n.id) + (n.this_node ? " *" : "") + "</td>" +
        '<td class="role">' + esc(n.role) + "</td>" +
        "<td>" + esc(n.term) + "</td>" +
        "<td>" + esc(n.leader) + "</td>" +
        "<td>" + esc(ms(n.lease_remaining_ms)) + "</td>" +
        "<td>" + esc(health(n)) + (n.ineligible_reason ? "<br><small>" + esc(n.ineligible_reason) + "</small>" : "") + "</td>" +
        "<td>" + esc(heard(n)) + "</td>" +
        "<td>" + esc(n.addr) + "</td>" +
        "<td>" + esc(drivers(n)) + "</td></tr>";
    });
    document.getElementById("nodes").innerHTML = rows.join("");
    document.getElementById("warnings").innerHTML = view.warnings.map(function (w) {
      return "<li>" + esc(w) + "</li>";
    }).join("");
  };
  var history = function (text) {
    var list = document.getElementById("history");
    var item = document.createElement("li");
    item.textContent = new Date().toISOString().substring(11, 23) + " UTC  " + text;
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 50) list.removeChild(list.lastChild);
  };
  var live = document.getElementById("live");
  var source = new EventSource("events");
  source.onopen = function () { live.textContent = "live"; live.className = "ok"; };
  source.onerror = function () { live.textContent = "reconnecting"; live.className = "bad"; };
  source.addEventListener("cluster", function (e) { draw(JSON.parse(e.data)); });
  source.addEventListener("role", function (e) {
    var d = JSON.parse(e.data);
    history(d.node + " is " + d.role + " (was " + d.was + ", term " + esc(d.term) + ")");
  });
  source.addEventListener("health", function (e) {
    var d = JSON.parse(e.data);
    history(d.node + " is " + d.health + (d.reason ? ": " + d.reason : ""));
  });
  source.addEventListener("peer", function (e) {
    var d = JSON.parse(e.data);
    history(d.node + (d.heard ? " is heard from again" : " is not heard from"));
  });
})();
