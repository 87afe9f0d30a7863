// The review page's keyboard shortcuts: a approve, r reject, e escalate, n next job; and the bulk confirmation.
"use strict";
(function () {
  const form = document.getElementById("verdict-form");
  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.tagName === "SELECT");
  }
  function decide(verdict) {
    if (!form) return;
    const button = form.querySelector('button[value="' + verdict + '"]');
    if (button) {
      form.requestSubmit(button);
    }
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const keys = { a: "approve", r: "reject", e: "escalate" };
    if (keys[event.key]) {
      event.preventDefault();
      decide(keys[event.key]);
    } else if (event.key === "n") {
      const next = document.getElementById("next-job");
      if (next) {
        event.preventDefault();
        window.location.assign(next.getAttribute("href"));
      }
    }
  });
  document.querySelectorAll("form[data-confirm]").forEach(function (bulk) {
    bulk.addEventListener("submit", function (event) {
      const button = event.submitter;
      const message = (button && button.dataset.confirm) || bulk.dataset.confirm;
      if (!window.confirm(message)) {
        event.preventDefault();
      }
    });
  });
})();
