// Live updates of a running task's page (the page works without them): server-sent events
// from /tasks/{id}/events recolour the graph's nodes and refresh the counters; after the
// outcome the page reloads to show it. Only textContent and class names are written.
(function () {
  "use strict";
  var script = document.getElementById("live-script");
  if (!script || !window.EventSource) { return; }
  var source = new EventSource(script.getAttribute("data-events"));
  var live = document.getElementById("live");
  if (live) { live.hidden = false; }
  function setState(element, state) {
    element.className.baseVal !== undefined
      ? element.setAttribute("class", "node st-" + state)
      : (element.className = "state st-" + state);
  }
  source.addEventListener("update", function (message) {
    var update = JSON.parse(message.data);
    var state = document.getElementById("state");
    state.textContent = update.state;
    state.className = "state st-" + update.state;
    document.getElementById("settled").textContent = String(update.settled);
    document.getElementById("total").textContent = String(update.total);
    update.types.forEach(function (t, i) {
      var row = document.querySelector('#progress tr[data-type="' + i + '"]');
      if (!row) { return; }
      ["succeeded", "failed", "running", "pending", "skipped", "total"].forEach(function (f) {
        var cell = row.querySelector('[data-field="' + f + '"]');
        if (cell) { cell.textContent = String(t[f]); }
      });
    });
    update.nodes.forEach(function (s, i) {
      var node = document.querySelector('svg [data-node="' + i + '"]');
      if (node) { setState(node, s); }
      var cell = document.querySelector('[data-node-state="' + i + '"]');
      if (cell) { cell.textContent = s; setState(cell, s); }
    });
    if (update.finished) {
      source.close();
      window.location.reload();
    }
  });
})();
