// Every page: on a phone the header's links fold into a "Menu" button (static/chat/chat.css).
(function () {
  "use strict";
  var toggle = document.getElementById("menu-toggle");
  var header = toggle && toggle.closest(".site-header");
  if (!toggle || !header) return;
  function set(open) {
    header.classList.toggle("menu-open", open);
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  }
  toggle.addEventListener("click", function (event) {
    event.stopPropagation();
    set(!header.classList.contains("menu-open"));
  });
  document.addEventListener("click", function (event) {
    if (header.classList.contains("menu-open") && !header.contains(event.target)) set(false);
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && header.classList.contains("menu-open")) { set(false); toggle.focus(); }
  });
})();
