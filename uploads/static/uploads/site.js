// Small progressive enhancements for every page: delete confirmation, live badges.
(function () {
  "use strict";

  // Forms with data-confirm ask before they submit (the no-JS path has its own page).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  var SETTLED = { done: true, failed: true };
  var FIRST_DELAY = 1500;
  var MAX_DELAY = 15000;

  function unsettledIds() {
    var ids = [];
    document.querySelectorAll("[data-upload-id]").forEach(function (row) {
      var open = Array.prototype.some.call(row.querySelectorAll(".badge[data-state]"), function (badge) {
        return !SETTLED[badge.dataset.state];
      });
      if (open) ids.push(row.dataset.uploadId);
    });
    return ids;
  }

  function applyStates(states) {
    Object.keys(states).forEach(function (id) {
      var row = document.querySelector('[data-upload-id="' + CSS.escape(id) + '"]');
      if (!row) return;
      var perConsumer = states[id];
      row.querySelectorAll(".badge[data-consumer]").forEach(function (badge) {
        var state = perConsumer[badge.dataset.consumer];
        if (!state || state === badge.dataset.state) return;
        badge.dataset.state = state;
        badge.className = "badge badge-" + state;
        var label = badge.querySelector(".badge-state");
        if (label) label.textContent = state;
        if (badge.title) badge.title = badge.dataset.consumer + ": " + state;
      });
    });
  }

  function startPolling() {
    var root = document.querySelector("[data-states-url]");
    if (!root) return;
    var url = root.dataset.statesUrl;
    var delay = FIRST_DELAY;
    var polls = 0;

    // A page marked data-refresh="page" (an upload's own page) shows more than the
    // state (attempts, last error): it re-reads its own HTML and swaps the table body.
    var refreshPage = root.dataset.refresh === "page";

    function refreshTable() {
      return fetch(window.location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) throw new Error("page: HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").querySelector(".states tbody");
          var current = document.querySelector(".states tbody");
          // Only when something changed, so a screen reader hears changes, not every poll.
          if (fresh && current && fresh.innerHTML !== current.innerHTML) current.innerHTML = fresh.innerHTML;
        });
    }

    function poll() {
      var ids = unsettledIds();
      if (!ids.length) return;
      if (refreshPage) {
        refreshTable()
          .then(function () { window.setTimeout(poll, delay); })
          .catch(function () { /* Signed out, deleted or offline: stop. */ });
        return;
      }
      fetch(url + "?ids=" + encodeURIComponent(ids.join(",")), {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      })
        .then(function (response) {
          if (!response.ok) throw new Error("states: HTTP " + response.status);
          return response.json();
        })
        .then(function (states) {
          applyStates(states);
          polls += 1;
          // Quick while the consumers usually catch up; gentler for a long-stuck one.
          if (polls > 40) delay = Math.min(MAX_DELAY, Math.round(delay * 1.5));
          window.setTimeout(poll, delay);
        })
        .catch(function () {
          /* Signed out or offline: stop; a reload shows the current state. */
        });
    }
    window.setTimeout(poll, delay);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startPolling);
  } else {
    startPolling();
  }
})();
