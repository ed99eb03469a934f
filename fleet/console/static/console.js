// Sigil console: the only script. Everything works without it; it adds a
// confirmation to dangerous forms and a copy button for secrets shown once.
"use strict";
document.addEventListener("submit", function (ev) {
  var msg = ev.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) {
    ev.preventDefault();
  }
});
document.addEventListener("click", function (ev) {
  var id = ev.target.getAttribute && ev.target.getAttribute("data-copy");
  if (!id) {
    return;
  }
  var field = document.getElementById(id);
  if (!field) {
    return;
  }
  field.select();
  var done = function () { ev.target.textContent = "Copied"; };
  if (navigator.clipboard) {
    navigator.clipboard.writeText(field.value).then(done, function () {});
  } else if (document.execCommand("copy")) {
    done();
  }
});
