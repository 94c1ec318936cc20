// The Evaluations pages' forms: a question before a form marked data-confirm is sent (delete,
// cancel), and the "New evaluation" form shows only the panel of the chosen source of items.
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  var radios = Array.prototype.slice.call(document.querySelectorAll('input[name="source"]'));
  var panels = Array.prototype.slice.call(document.querySelectorAll("[data-source-panel]"));
  if (!radios.length) return;

  function show() {
    var chosen = radios.filter(function (r) { return r.checked; })[0];
    panels.forEach(function (panel) { panel.hidden = !chosen || panel.dataset.sourcePanel !== chosen.value; });
  }

  radios.forEach(function (r) { r.addEventListener("change", show); });
  show();
})();
