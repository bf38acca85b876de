// Dispatch dashboard: refreshes the live part of the page every 2 seconds,
// unless paused (the header's button, remembered in this browser) or while
// the viewer is typing or editing in it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var stamp = document.getElementById("stamp");
  var toggle = document.getElementById("live-toggle");
  var paused = localStorage.getItem("dispatch-paused") === "1";

  function show() {
    if (!toggle) return;
    toggle.textContent = paused ? "Resume updates" : "Pause updates";
    toggle.setAttribute("aria-pressed", paused ? "true" : "false");
    document.body.classList.toggle("paused", paused);
  }

  function busy() {
    var a = document.activeElement;
    if (a && live.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)) return true;
    return live.querySelector("details[open]") !== null;
  }

  function refresh() {
    if (!live || paused || document.hidden || busy()) return;
    fetch(location.href, { headers: { "X-Dispatch-Live": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { location.assign("/ui/login"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null || busy()) return;
        live.innerHTML = html;
        if (stamp) stamp.textContent = "Updated " + new Date().toLocaleTimeString();
      })
      .catch(function () {
        if (stamp) stamp.textContent = "Cannot reach the server; retrying";
      });
  }

  if (toggle) {
    toggle.addEventListener("click", function () {
      paused = !paused;
      localStorage.setItem("dispatch-paused", paused ? "1" : "0");
      show();
    });
  }
  show();
  if (live) setInterval(refresh, 2000);
})();
