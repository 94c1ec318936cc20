// The compare page: one chat socket, two chat.send frames (the second once the first has
// started, so each side knows its reply), deltas appended as text (never as HTML).
(function () {
  "use strict";
  function el(id) { return document.getElementById(id); }
  var socket = null;
  var sides = {};        // message id -> "a" | "b"
  var waiting = [];      // sides whose chat.started has not come yet, in send order
  var pending = null;    // the second frame, sent after the first starts

  function open(then) {
    if (socket && socket.readyState === WebSocket.OPEN) { then(); return; }
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/ws/chat/");
    socket.onopen = then;
    socket.onmessage = function (event) { handle(JSON.parse(event.data)); };
    socket.onclose = function () { el("compare-send").disabled = false; };
  }

  function frame(side, content) {
    var select = el("model-" + side);
    el("title-" + side).textContent = select.options[select.selectedIndex].text;
    el("reply-" + side).textContent = "";
    el("meta-" + side).textContent = "waiting…";
    return { type: "chat.send", conversation: null, content: content, model: select.value, origin: "compare",
             params: { temperature: 0, max_tokens: parseInt(el("max-tokens").value, 10) || 128 } };
  }

  function send(side, data) { waiting.push(side); socket.send(JSON.stringify(data)); }

  function handle(data) {
    if (data.type === "chat.started") {
      sides[data.message] = waiting.shift();
      if (pending) { var next = pending; pending = null; send(next.side, next.frame); }
    } else if (data.type === "chat.delta" && sides[data.message]) {
      el("reply-" + sides[data.message]).textContent += data.text;
      el("meta-" + sides[data.message]).textContent = "streaming…";
    } else if (data.type === "chat.done" && sides[data.message]) {
      var side = sides[data.message];
      var usage = data.usage || {};
      el("meta-" + side).textContent = data.finish_reason + (usage.completion_tokens !== undefined ? " · " + usage.completion_tokens + " tokens" : "") + (data.error ? " · " + data.error : "");
      el("reply-" + side).dataset.done = "1";
      delete sides[data.message];
      if (!Object.keys(sides).length && !waiting.length) el("compare-send").disabled = false;
    } else if (data.type === "chat.error") {
      var side2 = waiting.shift();
      if (side2) el("meta-" + side2).textContent = "";
      el("compare-error").textContent = data.message;
      el("compare-error").hidden = false;
      if (pending) { var again = pending; pending = null; send(again.side, again.frame); }
      el("compare-send").disabled = false;
    }
  }

  el("compare-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var content = el("compare-prompt").value;
    if (!content.trim()) return;
    el("compare-error").hidden = true;
    el("compare-send").disabled = true;
    el("reply-a").dataset.done = ""; el("reply-b").dataset.done = "";
    var first = frame("a", content);
    pending = { side: "b", frame: frame("b", content) };
    open(function () { send("a", first); });
  });
  // The button ships disabled: a click before this script ran would submit the form natively
  // (a page reload that loses the prompt).
  el("compare-send").disabled = false;
})();
