// certrail console: progressive enhancement only; every page works without it.
(function () {
  "use strict";
  function onReady(fn) { if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); } }
  onReady(function () {
    // Create/Edit emCA connector: show only the chosen version's secret fields (hidden ones are disabled, so never sent)
    var select = document.querySelector("[data-version-select]");
    if (select) {
      var sync = function () {
        document.querySelectorAll("[data-versions]").forEach(function (box) {
          var shown = box.getAttribute("data-versions").split("|").indexOf(select.value) >= 0;
          box.hidden = !shown;
          box.querySelectorAll("input, select, textarea").forEach(function (el) { el.disabled = !shown; });
        });
      };
      select.addEventListener("change", sync);
      sync();
    }
    // Add/Edit deployment target: show only the chosen kind's fields (hidden ones are disabled, so never sent)
    var kind = document.querySelector("[data-kind-select], [data-kind-fixed]");
    if (kind) {
      var syncKind = function () {
        var chosen = kind.getAttribute("data-kind-fixed") || kind.value;
        document.querySelectorAll("[data-kinds]").forEach(function (box) {
          var shown = box.getAttribute("data-kinds").split("|").indexOf(chosen) >= 0;
          box.hidden = !shown;
          box.querySelectorAll("input, select, textarea").forEach(function (el) {
            el.disabled = !shown;
            el.required = shown && box.hasAttribute("data-required");
          });
        });
      };
      kind.addEventListener("change", syncKind);
      syncKind();
    }
    // "Did you mean ...?": fill the field with the near match and focus it
    document.querySelectorAll("button[data-fill]").forEach(function (button) {
      button.addEventListener("click", function () {
        var field = document.getElementById(button.getAttribute("data-fill"));
        if (field) { field.value = button.getAttribute("data-value"); field.focus(); }
      });
    });
    // Configure Bot: the connector's default emCA profile when none is given yet
    var ca = document.getElementById("f-connector");
    var profile = document.getElementById("f-ca_profile");
    if (ca && profile && ca.tagName === "SELECT") {
      ca.addEventListener("change", function () {
        var option = ca.options[ca.selectedIndex];
        if (option && !profile.value && option.getAttribute("data-default-profile")) { profile.value = option.getAttribute("data-default-profile"); }
      });
    }
    // a refused form: move focus to the error summary
    var summary = document.getElementById("error-summary");
    if (summary) { summary.focus(); }
  });
})();
