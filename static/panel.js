// vastpanel's only script of its own: local times, the copy button, and a banner when a
// request fails. Everything else is htmx; without JavaScript the page still works (UTC times).
(function () {
  "use strict";

  var dateTimeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  var clockFormat = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  var dayFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "numeric", day: "numeric" });

  // The one way the page shows a moment: in the admin's own time zone, the clock time alone
  // when it is today, with its date otherwise.
  function localText(when) {
    var today = dayFormat.format(when) === dayFormat.format(new Date());
    return (today ? clockFormat : dateTimeFormat).format(when);
  }

  // Show each <time datetime="...Z" data-local> (the server writes every time so) locally.
  function localizeTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      if (!el.title) el.title = el.textContent;  // keep the UTC text as a tooltip
      el.textContent = localText(when);
    });
  }

  // Copy buttons are hidden without JavaScript; the field stays selectable either way.
  function enableCopyButtons(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (button) {
      var field = document.getElementById(button.getAttribute("data-copy"));
      if (!field) return;
      button.hidden = false;
      button.addEventListener("click", function () {
        var done = function () { button.textContent = "Copied"; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(done, function () { field.select(); });
        } else {
          field.select();
          if (document.execCommand && document.execCommand("copy")) done();
        }
      });
    });
  }

  var banner = null;
  function showProblem(text) {
    banner = banner || document.getElementById("request-error");
    if (!banner) return;
    banner.textContent = text;  // text, never HTML
    banner.hidden = false;
  }
  function clearProblem() {
    banner = banner || document.getElementById("request-error");
    if (banner) banner.hidden = true;
  }

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var type = xhr.getResponseHeader("Content-Type") || "";
    var text = type.indexOf("text/plain") === 0 ? xhr.responseText.slice(0, 400) : "";
    showProblem("The request failed (HTTP " + xhr.status + "). " + text);
  });
  document.addEventListener("htmx:sendError", function () {
    showProblem("The panel's server cannot be reached; the page keeps trying.");
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.successful) clearProblem();
  });

  // A widget whose form is open (the recipe's edit form) is not reloaded under the admin's
  // hands; its own form's post still goes through.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (elt && elt.matches && elt.matches("section[hx-get]") && elt.querySelector("details[open]")) {
      event.preventDefault();
    }
  });

  function setUp(root) {
    localizeTimes(root);
    enableCopyButtons(root);
  }
  if (window.htmx) {
    htmx.onLoad(setUp);  // the page, then every swapped-in widget
  } else {
    document.addEventListener("DOMContentLoaded", function () { setUp(document); });
  }
})();
