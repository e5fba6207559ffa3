/* fax-gateway status page: fetch the page again every few seconds and swap the part
   that changes (#live), so the scroll position, the search box and any selection stay.
   Served from the same listener; the page's Content-Security-Policy allows no inline
   script. Without JavaScript a <noscript> meta refresh reloads the page instead. */
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch || !window.DOMParser) {
    return;
  }
  var every = parseInt(live.getAttribute("data-refresh"), 10) || 5000;
  var stale = document.getElementById("stale");
  var refreshed = 0;
  var timer = null;

  function schedule() {
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, every);
  }

  function mark(ok) {
    if (stale) {
      stale.hidden = ok;
    }
  }

  function refresh() {
    if (document.hidden) {          /* a background tab asks nothing; see visibilitychange */
      return;
    }
    window.fetch(window.location.href, {cache: "no-store", credentials: "same-origin",
                                        headers: {"Accept": "text/html"}})
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (type.indexOf("text/html") !== 0) {
          throw new Error("not the page: HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("live");
        if (!fresh) {
          throw new Error("the answer has no #live");
        }
        live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes));
        if (doc.title) {
          document.title = doc.title;
        }
        refreshed += 1;
        document.documentElement.setAttribute("data-refreshed", String(refreshed));
        mark(true);
      })
      .catch(function () {
        mark(false);
      })
      .then(schedule);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      refresh();
    }
  });
  schedule();
}());
