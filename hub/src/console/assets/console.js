// Vigo Spanner console: refreshes the sections marked `data-live` in place (the URL in
// the attribute answers the section's HTML, rendered and escaped by the hub). Every
// page works without this script; it only saves a reload.
(function () {
  "use strict";
  document.querySelectorAll("[data-live]").forEach(function (section) {
    var every = Math.max(2, parseInt(section.dataset.every || "10", 10)) * 1000;
    var busy = false;
    function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(section.dataset.live, { credentials: "same-origin", headers: { accept: "text/html" } })
        .then(function (answer) {
          if (answer.redirected || answer.status === 401) {
            window.location.reload(); // the session ended: show the log-in page
            return null;
          }
          if (!answer.ok) throw new Error("HTTP " + answer.status);
          return answer.text();
        })
        .then(function (html) {
          if (html === null) return;
          section.innerHTML = html;
          section.classList.remove("stale");
          section.dataset.refreshed = String(Date.now());
        })
        .catch(function () {
          section.classList.add("stale");
        })
        .finally(function () {
          busy = false;
        });
    }
    window.setInterval(refresh, every);
  });
})();
