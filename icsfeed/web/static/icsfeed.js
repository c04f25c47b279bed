// icsfeed pages: copy buttons, month-view popovers (pin, Escape) and kind toggles.
// Loaded from 'self' (the CSP forbids inline script); the pages work without it, except
// for copying, pinning a popover by click, and hiding kinds.
"use strict";

(function () {
  // --- copy a feed URL ------------------------------------------------------------------
  function copyFrom(button) {
    var input = document.getElementById(button.getAttribute("data-copy"));
    var note = button.parentNode.querySelector(".copied");
    if (!input) return;
    function done(ok) {
      if (note) note.textContent = ok ? "Copied" : "Select and copy the URL";
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () { done(true); }, function () {
        input.select();
        done(document.execCommand("copy"));
      });
    } else {
      input.select();
      done(document.execCommand("copy"));
    }
  }

  // --- popovers ---------------------------------------------------------------------------
  function kindOf(node) {
    return node && node.closest ? node.closest("li.kind") : null;
  }

  function setExpanded(li, expanded) {
    var button = li.querySelector("button.icon");
    if (button) button.setAttribute("aria-expanded", expanded ? "true" : "false");
  }

  function closeAll(except) {
    document.querySelectorAll("li.kind.open").forEach(function (li) {
      if (li !== except) {
        li.classList.remove("open");
        setExpanded(li, false);
      }
    });
  }

  function initPopovers() {
    document.querySelectorAll("li.kind").forEach(function (li) {
      li.addEventListener("focusin", function () {
        li.classList.remove("dismissed");
        setExpanded(li, true);
      });
      li.addEventListener("focusout", function (event) {
        if (!li.contains(event.relatedTarget)) {
          li.classList.remove("open", "dismissed");
          setExpanded(li, false);
        }
      });
      li.addEventListener("mouseenter", function () {
        li.classList.remove("dismissed");
      });
      li.addEventListener("mouseleave", function () {
        li.classList.remove("dismissed");
      });
    });
    document.querySelectorAll("li.kind > button.icon").forEach(function (button) {
      button.addEventListener("click", function (event) {
        var li = kindOf(button);
        var open = !li.classList.contains("open");
        closeAll(li);
        li.classList.toggle("open", open);
        li.classList.toggle("dismissed", !open);
        setExpanded(li, open);
        event.stopPropagation();
      });
    });
    document.addEventListener("click", function (event) {
      if (!kindOf(event.target)) closeAll(null);
    });
    document.addEventListener("keydown", function (event) {
      if (event.key !== "Escape") return;
      var li = kindOf(document.activeElement);
      var targets = li ? [li] : Array.prototype.slice.call(document.querySelectorAll("li.kind.open, li.kind:hover"));
      targets.forEach(function (item) {
        item.classList.remove("open");
        item.classList.add("dismissed");
        setExpanded(item, false);
        var icon = item.querySelector(".icon");
        if (item.contains(document.activeElement) && icon && document.activeElement !== icon) icon.focus();
      });
    });
  }

  // --- kind toggles, kept in the URL hash (#hide=backup,ticket) --------------------------------
  function hiddenFromHash() {
    var match = /(?:^#|&)hide=([^&]*)/.exec(window.location.hash);
    if (!match) return [];
    return decodeURIComponent(match[1]).split(",").filter(Boolean);
  }

  function applyToggles(hidden) {
    document.querySelectorAll("input.kind-toggle").forEach(function (box) {
      box.checked = hidden.indexOf(box.value) < 0;
    });
    document.querySelectorAll("li.kind").forEach(function (li) {
      li.hidden = hidden.indexOf(li.getAttribute("data-kind")) >= 0;
    });
    document.querySelectorAll("td.day").forEach(function (td) {
      td.classList.toggle("empty", !td.querySelector("li.kind:not([hidden])"));
    });
    var hash = hidden.length ? "#hide=" + encodeURIComponent(hidden.join(",")) : "";
    document.querySelectorAll("a.month-link").forEach(function (link) {
      link.setAttribute("href", link.getAttribute("href").split("#")[0] + hash);
    });
    return hash;
  }

  function initToggles() {
    var boxes = document.querySelectorAll("input.kind-toggle");
    if (!boxes.length) return;
    applyToggles(hiddenFromHash());
    boxes.forEach(function (box) {
      box.addEventListener("change", function () {
        var hidden = [];
        boxes.forEach(function (b) { if (!b.checked) hidden.push(b.value); });
        var hash = applyToggles(hidden);
        history.replaceState(null, "", window.location.pathname + window.location.search + hash);
      });
    });
    window.addEventListener("hashchange", function () { applyToggles(hiddenFromHash()); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () { copyFrom(button); });
    });
    initPopovers();
    initToggles();
  });
})();
