"""The chat page's own CSS and the script put first into its <head> (see ``rag.api.ChinesePage``)."""

from __future__ import annotations

__all__ = ["CSS", "HEAD"]

CSS = """
.rag-note { color: #666; font-size: 0.9em; }
#examples button { flex: 0 1 auto; }
#filters { gap: 6px; }
#chat a[href^="#cite-"] { color: var(--color-accent); font-weight: 600; text-decoration: none; }
#chat .bubble-wrap { padding-top: 48px; }  /* the chat's label and toolbar no longer cover the first question */
"""
# Put into the page's <head> before Gradio's own scripts (rag.api rewrites the page): Gradio picks its
# interface language from the browser's, so the browser's is said to be Chinese (the page is, whatever the
# browser); a click on an answer's [n] (a link to #cite-TURN-I) asks the server for that source's article,
# which is then scrolled to its highlighted excerpt; a click on 复制回答和来源 (#copy-TURN) asks for that answer
# with its sources as plain text and puts it on the clipboard.
HEAD = """<script>
(function () {
  try {
    Object.defineProperty(Navigator.prototype, "language", {get: function () { return "zh-CN"; }, configurable: true});
    Object.defineProperty(Navigator.prototype, "languages", {get: function () { return ["zh-CN", "zh"]; }, configurable: true});
  } catch (e) {}
  document.documentElement.lang = "zh-CN";
  window.ragScrollToExcerpt = function (target) {
    var head = (target || "").slice(0, 12), tries = 60;
    (function look() {
      var marks = document.querySelectorAll("#article-view .token.highlighted, #article-view mark");
      for (var i = 0; i < marks.length; i++) {
        if (!head || marks[i].textContent.indexOf(head) >= 0) { marks[i].scrollIntoView({block: "center"}); return; }
      }
      if (tries-- > 0) setTimeout(look, 100);
    })();
  };
  window.ragCopy = function (text) {
    if (!text) return;
    var done = function () { window.ragCopied = text; };
    var fallback = function () {
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } finally { area.remove(); }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  };
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a[href*='#cite-'], a[href*='#copy-']") : null;
    if (!a) return;
    ev.preventDefault();
    ev.stopPropagation();
    var href = a.getAttribute("href"), copy = href.indexOf("#copy-") >= 0;
    var box = document.querySelector(copy ? "#copy-key textarea" : "#cite-key textarea");
    if (!box) return;
    box.value = href.split(copy ? "#copy-" : "#cite-")[1] + "@" + Date.now();
    box.dispatchEvent(new Event("input", {bubbles: true}));
  }, true);
})();
</script>"""
