// Sigil console: the only script. Everything works without it; it adds a
// confirmation to dangerous forms and buttons and a copy button for secrets shown once.
"use strict";
document.addEventListener("submit", function (ev) {
  // The button's own confirmation (a form with several actions) or the
  // form's.
  var b = ev.submitter;
  var msg = (b && b.getAttribute("data-confirm")) || ev.target.getAttribute("data-confirm");
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
