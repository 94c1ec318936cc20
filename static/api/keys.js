// The API keys page: copy a new key to the clipboard (it is shown once).
(function () {
  "use strict";
  var button = document.getElementById("copy-key");
  var field = document.getElementById("new-key");
  if (!button || !field) return;
  button.hidden = false;
  button.addEventListener("click", function () {
    field.select();
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });
})();
