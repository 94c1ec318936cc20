/*
 * Chat page client: one websocket per tab (docs/protocol.md, version 1.1), the sidebar and the
 * settings panel. No dependencies, no build step. The settings' bounds, help and the models'
 * defaults come from the server in the page's JSON config (chat-config), never from here.
 *
 * Safety rule: text from the model or the user is inserted with textContent / Text nodes.
 * innerHTML is used only for HTML rendered and sanitized by the server (the `html` field of
 * chat.delta and chat.done, and the page's own server-rendered messages).
 */
(function () {
  "use strict";

  var configElement = document.getElementById("chat-config");
  if (!configElement) return;
  var config = JSON.parse(configElement.textContent);

  var $ = function (id) { return document.getElementById(id); };
  var els = {
    messages: $("messages"),
    messagesEmpty: $("messages-empty"),
    input: $("composer-input"),
    composer: $("composer"),
    send: $("send"),
    stop: $("stop"),
    banner: $("error-banner"),
    bannerText: $("error-text"),
    bannerClose: $("error-close"),
    title: $("conversation-title"),
    list: $("conversation-list"),
    listEmpty: $("conversation-empty"),
    search: $("search"),
    sidebar: $("sidebar"),
    sidebarToggle: $("sidebar-toggle"),
    backdrop: $("sidebar-backdrop"),
    settingsToggle: $("settings-toggle"),
    settingsPanel: $("settings-panel"),
    settingsForm: $("settings-form"),
    settingsStatus: $("settings-status"),
    settingsError: $("settings-error"),
    modelSelect: $("model-select"),
    systemPrompt: $("system-prompt"),
    connection: $("connection-status"),
    count: $("composer-count"),
    replyStatus: $("reply-status"),
    newChat: $("new-chat"),
  };

  var STATUS_TEXT = {
    stopped: "stopped",
    interrupted: "interrupted — the worker running this reply stopped",
  };
  var FINISH_TO_STATUS = {
    stop: "complete",
    length: "complete",
    moderated: "complete",
    cancelled: "stopped",
    interrupted: "interrupted",
    error: "error",
  };

  var state = {
    conversation: config.conversation,
    generating: null,        // id of the assistant message generating in this conversation
    pending: null,           // {kind: "send"|"regenerate"|"edit", content, replaces} until chat.started
    versions: config.versions || {},  // message id -> ids of its versions, oldest first (chat/branches.py)
    lastSeq: {},             // message id -> last delta seq applied
    streamText: {},          // message id -> the reply's Markdown so far (the deltas' text)
    lastSent: null,          // {message, content}: the reply to the message last sent from the box
    modelConfirmed: !config.disabledModel,  // the person saw that the conversation's model is gone
    pendingSettings: null,   // settings chosen in a new chat, saved once it exists
    lostPending: null,       // a request sent just before the socket dropped
    resumeTries: {},         // message id -> resumes asked after a stream_failed error
    socket: null,
    outbox: [],
    backoff: 500,
    reconnectTimer: null,
    everConnected: false,
    stopReconnecting: false,
    stickToBottom: true,
  };

  // ---------------------------------------------------------------- helpers

  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function postJSON(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body || {}),
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { ok: response.ok, status: response.status, data: data };
      });
    });
  }

  function errorsText(errors) {
    if (!errors) return "The request failed.";
    if (typeof errors === "string") return errors;
    return Object.keys(errors).map(function (key) {
      var value = errors[key];
      return Array.isArray(value) ? value.join(" ") : String(value);
    }).join(" ");
  }

  function showError(text) {
    els.bannerText.textContent = text;
    els.banner.hidden = false;
  }

  /** Coming here from a conversation deleted in another tab (leaveDeleted): say so, and give the
   * message that was being typed back to the box. */
  function restoreAfterDeleted() {
    var left = null;
    try {
      left = JSON.parse(sessionStorage.getItem("chat-left") || "null");
      sessionStorage.removeItem("chat-left");
    } catch (e) { left = null; }
    if (!left) return;
    showError(left.reason);
    if (left.draft && !els.input.value) els.input.value = left.draft;
  }

  function hideError() {
    els.banner.hidden = true;
    els.bannerText.textContent = "";
  }

  /** Tell a screen reader what happened (a polite live region, not the streaming text itself). */
  function announce(text) {
    els.replyStatus.textContent = text;
  }

  function messageElement(id) {
    return els.messages.querySelector('[data-testid="message"][data-message-id="' + Number(id) + '"]');
  }

  function bodyOf(element) {
    return element.querySelector(".message-body");
  }

  /** A button with a test id and a name a screen reader reads (`label`, also its tooltip). */
  function makeButton(className, testid, label, text) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = className;
    button.setAttribute("data-testid", testid);
    button.setAttribute("aria-label", label);
    button.title = label;
    button.textContent = text;
    return button;
  }

  // ---------------------------------------------------------------- scrolling

  function nearBottom() {
    var m = els.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 48;
  }

  function scrollToBottom(force) {
    if (force || state.stickToBottom) {
      els.messages.scrollTop = els.messages.scrollHeight;
    }
  }

  els.messages.addEventListener("scroll", function () {
    state.stickToBottom = nearBottom();
  });

  // ---------------------------------------------------------------- messages

  function createMessage(id, role, modelName) {
    var article = document.createElement("article");
    article.className = "message message-" + role;
    article.setAttribute("data-testid", "message");
    article.setAttribute("data-role", role);
    article.setAttribute("data-message-id", String(id));
    article.setAttribute("data-status", role === "assistant" ? "queued" : "complete");
    article.setAttribute("data-finish-reason", "");

    var meta = document.createElement("div");
    meta.className = "message-meta";
    meta.textContent = role === "user" ? "You" : "Assistant" + (modelName ? " · " + modelName : "");
    article.appendChild(meta);

    var body = document.createElement("div");
    body.className = "message-body plain";
    body.setAttribute("data-testid", "message-body");
    article.appendChild(body);

    if (role === "assistant") {
      var status = document.createElement("div");
      status.className = "message-status";
      status.setAttribute("data-testid", "message-status");
      article.appendChild(status);
      var stats = document.createElement("div");
      stats.className = "message-stats";
      stats.setAttribute("data-testid", "message-stats");
      article.appendChild(stats);
    }
    var actions = document.createElement("div");
    actions.className = "message-actions";
    article.appendChild(actions);
    els.messagesEmpty.hidden = true;
    els.messages.appendChild(article);
    return article;
  }

  function modelName(slug) {
    var models = config.models || [];
    for (var i = 0; i < models.length; i++) {
      if (models[i].slug === slug) return models[i].name;
    }
    return slug || "";
  }

  function setGeneratingLook(element) {
    element.setAttribute("data-status", "generating");
    element.setAttribute("aria-busy", "true");
    element.classList.add("is-generating");
    var status = element.querySelector(".message-status");
    if (status) status.textContent = "generating…";
    var stats = element.querySelector(".message-stats");
    if (stats) stats.textContent = "";
  }

  function clearStreamedText(element) {
    var body = bodyOf(element);
    body.textContent = "";
    body.classList.add("plain");
    state.streamText[element.getAttribute("data-message-id")] = "";
    element.setAttribute("data-markdown", "");
  }

  /** A delta: its text joins the reply's Markdown; its `html` (the server's sanitized rendering
   * of the whole reply so far, on the last delta of each batch) replaces the body. */
  function appendDelta(frame) {
    var element = messageElement(frame.message);
    if (!element) return;
    var last = state.lastSeq[frame.message] || 0;
    if (typeof frame.seq === "number" && frame.seq <= last) return;  // replayed after a resume
    if (typeof frame.seq === "number") state.lastSeq[frame.message] = frame.seq;
    if (element.getAttribute("data-status") !== "generating") setGeneratingLook(element);
    var stick = state.stickToBottom;
    var text = String(frame.text || "");
    state.streamText[frame.message] = (state.streamText[frame.message] || "") + text;
    element.setAttribute("data-markdown", state.streamText[frame.message]);  // what Copy copies
    var body = bodyOf(element);
    if (typeof frame.html === "string") {
      body.innerHTML = frame.html;  // server-rendered, bleach-sanitized (chat/live.py)
      body.classList.remove("plain");
    } else if (body.classList.contains("plain")) {
      body.appendChild(document.createTextNode(text));  // no rendering yet: plain text
    }
    if (stick) scrollToBottom(true);
  }

  function formatStats(usage, timing) {
    var parts = [];
    if (usage && usage.completion_tokens != null) parts.push(usage.completion_tokens + " tokens");
    if (timing && timing.ttft_ms != null) parts.push("first token " + Math.round(timing.ttft_ms) + " ms");
    if (timing && timing.tokens_per_s != null) parts.push(Number(timing.tokens_per_s).toFixed(1) + " tok/s");
    return parts;
  }

  function renderStats(element, usage, timing) {
    var stats = element.querySelector(".message-stats");
    if (!stats) return;
    stats.textContent = "";
    formatStats(usage, timing).forEach(function (text) {
      var span = document.createElement("span");
      span.textContent = text;
      stats.appendChild(span);
    });
  }

  function finishMessage(frame) {
    var element = messageElement(frame.message);
    if (element) {
      var reason = frame.finish_reason || "stop";
      var status = FINISH_TO_STATUS[reason] || "complete";
      var body = bodyOf(element);
      if (typeof frame.html === "string" && (frame.html !== "" || status === "complete")) {
        // Server-rendered, bleach-sanitized HTML: the only place innerHTML takes frame data.
        body.innerHTML = frame.html;
        body.classList.remove("plain");
      }
      element.setAttribute("data-status", status);
      element.setAttribute("data-finish-reason", reason);
      element.classList.remove("is-generating");
      var statusLine = element.querySelector(".message-status");
      if (statusLine) {
        if (status === "error") statusLine.textContent = "error: " + (frame.error || "the reply failed");
        else if (STATUS_TEXT[status]) statusLine.textContent = STATUS_TEXT[status];
        else if (reason === "length") statusLine.textContent = "max tokens reached";
        else if (reason === "moderated") statusLine.textContent = frame.error || "stopped by moderation";
        else statusLine.textContent = "";
      }
      renderStats(element, frame.usage, frame.timing);
      element.removeAttribute("aria-busy");
      var streamed = state.streamText[frame.message];
      if (typeof streamed === "string" && streamed !== "") element.setAttribute("data-markdown", streamed);
      attachCopyButtons(element);
      attachFeedback(element);
      // The stats and feedback rows just added: a reader at the bottom stays there (the finished
      // reply's feedback row used to hide behind the composer).
      scrollToBottom();
      if (state.generating === frame.message) {
        announce(status === "error" ? "The reply failed: " + (frame.error || "error") + "."
          : status === "complete" ? "The reply is complete." : "The reply " + status + ".");
      }
      giveBackFailedMessage(frame.message, status);
    }
    delete state.lastSeq[frame.message];
    delete state.streamText[frame.message];
    if (state.generating === frame.message) state.generating = null;
    updateControls();
  }

  function latestAssistant() {
    var all = els.messages.querySelectorAll('[data-testid="message"][data-role="assistant"]');
    return all.length ? all[all.length - 1] : null;
  }

  function updateRegenerate() {
    var buttons = els.messages.querySelectorAll('[data-testid="regenerate"]');
    for (var i = 0; i < buttons.length; i++) buttons[i].remove();
    if (state.generating || state.pending) return;
    var latest = latestAssistant();
    if (!latest) return;
    var status = latest.getAttribute("data-status");
    if (status === "queued" || status === "generating") return;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "button small regenerate";
    button.setAttribute("data-testid", "regenerate");
    button.textContent = "Regenerate";
    button.addEventListener("click", function () {
      regenerate(Number(latest.getAttribute("data-message-id")));
    });
    latest.querySelector(".message-actions").appendChild(button);
  }

  function updateControls() {
    var busy = Boolean(state.generating || state.pending);
    els.send.disabled = busy || !config.models || config.models.length === 0 || Boolean(lengthProblem());
    els.stop.hidden = !state.generating;
    els.composer.classList.toggle("is-busy", busy);
    updateRegenerate();
    renderVersions();
    var edits = els.messages.querySelectorAll('[data-testid="edit-message"], [data-testid="edit-send"]');
    for (var i = 0; i < edits.length; i++) edits[i].disabled = busy;
  }

  // ---------------------------------------------------------------- versions and edits
  // A conversation is a tree (chat/branches.py): an edited message and a regenerated reply are
  // new versions of a message. The page shows one branch; "‹ 2 / 3 ›" shows another version,
  // with the branch below it (POST /api/messages/<id>/show/).

  /** Remove the message `id` and every message after it (the branch below it). */
  function removeFrom(id) {
    var element = messageElement(id);
    while (element) {
      var next = element.nextElementSibling;
      if (element.getAttribute("data-testid") === "message") element.remove();
      element = next;
    }
  }

  function actionsOf(element) {
    var actions = element.querySelector(".message-actions");
    if (!actions) {
      actions = document.createElement("div");
      actions.className = "message-actions";
      element.appendChild(actions);
    }
    return actions;
  }

  function versionButton(testid, label, symbol, target, disabled) {
    var button = makeButton("button small version-step", testid, label, symbol);
    button.disabled = disabled;
    button.addEventListener("click", function () { showVersion(target); });
    return button;
  }

  function renderVersions() {
    var old = els.messages.querySelectorAll('[data-testid="versions"]');
    for (var i = 0; i < old.length; i++) old[i].remove();
    var busy = Boolean(state.generating || state.pending);
    Object.keys(state.versions).forEach(function (key) {
      var ids = state.versions[key];
      var element = messageElement(key);
      if (!element || !ids || ids.length < 2) return;
      var index = ids.indexOf(Number(key));
      if (index < 0) return;
      var what = element.getAttribute("data-role") === "user" ? "message" : "reply";
      var nav = document.createElement("span");
      nav.className = "versions";
      nav.setAttribute("data-testid", "versions");
      nav.setAttribute("role", "group");
      nav.setAttribute("aria-label", "Versions of this " + what);
      var label = document.createElement("span");
      label.setAttribute("data-testid", "version-label");
      label.textContent = (index + 1) + " / " + ids.length;
      nav.appendChild(versionButton("version-prev", "Previous version of this " + what, "‹",
                                    ids[index - 1], busy || index === 0));
      nav.appendChild(label);
      nav.appendChild(versionButton("version-next", "Next version of this " + what, "›",
                                    ids[index + 1], busy || index === ids.length - 1));
      var actions = actionsOf(element);
      actions.insertBefore(nav, actions.firstChild);
    });
  }

  function mergeVersions(versions) {
    Object.keys(versions || {}).forEach(function (key) {
      versions[key].forEach(function (id) { state.versions[id] = versions[key]; });
    });
  }

  /** The branch the server shows now ({messages, versions, feedback}): the page follows it. */
  function applyThread(data) {
    config.feedback = Object.assign(config.feedback || {}, data.feedback || {});
    state.versions = data.versions || {};
    syncMessages(data.messages || []);
    attachEditButtons();
    updateControls();
  }

  function fetchThread() {
    return fetch("/api/conversations/" + Number(state.conversation) + "/messages/", { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      });
  }

  function showVersion(id) {
    if (state.generating || state.pending || id == null) return;
    hideError();
    postJSON("/api/messages/" + Number(id) + "/show/", {}).then(function (result) {
      if (!result.ok) {
        showError(result.data && result.data.error ? result.data.error.message : "Could not show that version.");
        return;
      }
      applyThread(result.data);
      var ids = state.versions[id] || [id];
      announce("Showing version " + (ids.indexOf(Number(id)) + 1) + " of " + ids.length + ".");
    }).catch(function () { showError("Could not show that version (network error)."); });
  }

  function attachEditButton(element) {
    if (element.getAttribute("data-role") !== "user" || element.querySelector('[data-testid="edit-message"]')) return;
    var button = makeButton("button small", "edit-message", "Edit this message and send it again", "Edit");
    button.disabled = Boolean(state.generating || state.pending);
    button.addEventListener("click", function () { startEdit(element); });
    actionsOf(element).appendChild(button);
  }

  function attachEditButtons() {
    var users = els.messages.querySelectorAll('[data-testid="message"][data-role="user"]');
    for (var i = 0; i < users.length; i++) attachEditButton(users[i]);
  }

  /** Edit a sent message in place; sending it forks the conversation there (chat.edit). */
  function startEdit(element) {
    if (element.querySelector(".edit-form")) return;
    var id = Number(element.getAttribute("data-message-id"));
    var body = bodyOf(element);
    var form = document.createElement("form");
    form.className = "edit-form";
    form.setAttribute("data-testid", "edit-form");
    var area = document.createElement("textarea");
    area.setAttribute("data-testid", "edit-input");
    area.setAttribute("aria-label", "Edit your message");
    area.rows = 3;
    if (config.maxMessageChars) area.maxLength = config.maxMessageChars;
    var stored = element.getAttribute("data-markdown");
    area.value = stored !== null ? stored : body.textContent;
    var buttons = document.createElement("div");
    buttons.className = "edit-buttons";
    var save = document.createElement("button");
    save.type = "submit";
    save.className = "button small primary";
    save.setAttribute("data-testid", "edit-send");
    save.textContent = "Send";
    var cancel = makeButton("button small", "edit-cancel", "Cancel the edit", "Cancel");
    buttons.appendChild(save);
    buttons.appendChild(cancel);
    form.appendChild(area);
    form.appendChild(buttons);
    body.hidden = true;
    var editButton = element.querySelector('[data-testid="edit-message"]');
    if (editButton) editButton.hidden = true;  // the form is open: its Send and Cancel are the actions
    element.insertBefore(form, body.nextSibling);
    area.focus();

    function close() {
      form.remove();
      body.hidden = false;
      if (editButton) editButton.hidden = false;
    }
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        close();
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (state.generating || state.pending) return;
      if (!area.value.trim()) {
        showError("The message is empty: type something to send.");
        return;
      }
      if (!state.modelConfirmed) {
        showError("This conversation's model was disabled. Choose “Use " + modelName(config.defaultModel) +
                  "” above, or another model in Settings, then send again.");
        return;
      }
      hideError();
      var frame = { type: "chat.edit", message: id, content: area.value };
      if (els.modelSelect.value) frame.model = els.modelSelect.value;
      var params = sendParams();
      if (Object.keys(params).length) frame.params = params;
      state.pending = { kind: "edit", content: area.value, replaces: id };
      state.pending.sent = transmit(frame);
      updateControls();
    });
  }

  // ---------------------------------------------------------------- copy buttons

  /** The reply's Markdown: what was streamed here, else what the server stored (data-markdown). */
  function markdownOf(element) {
    var stored = element.getAttribute("data-markdown");
    return stored !== null ? stored : bodyOf(element).textContent;
  }

  function copyWithSelection(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (error) { ok = false; }
    area.remove();
    return ok;
  }

  function copyText(text, button) {
    var label = button.getAttribute("aria-label");
    function copied() {
      button.classList.add("copied");
      button.textContent = "Copied";
      button.setAttribute("aria-label", "Copied");
      announce("Copied to the clipboard.");
      clearTimeout(button.copiedTimer);
      button.copiedTimer = setTimeout(function () {
        button.classList.remove("copied");
        button.textContent = "Copy";
        button.setAttribute("aria-label", label);
      }, 2000);
    }
    function failed() {
      if (copyWithSelection(text)) copied();
      else showError("Could not copy: the browser did not allow access to the clipboard.");
    }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(copied, failed);
    } else {
      failed();
    }
  }

  function copyButton(testid, label, getText) {
    var button = makeButton("button small copy-button " + testid, testid, label, "Copy");
    button.addEventListener("click", function () { copyText(getText(), button); });
    return button;
  }

  /** A finished reply gets "Copy" (its Markdown) and each of its code blocks one (the code). */
  function attachCopyButtons(element) {
    if (!element || element.getAttribute("data-role") !== "assistant") return;
    var blocks = bodyOf(element).querySelectorAll("pre");
    for (var i = 0; i < blocks.length; i++) {
      var pre = blocks[i];
      if (pre.parentNode.classList.contains("code-block")) continue;
      var wrapper = document.createElement("div");
      wrapper.className = "code-block";
      pre.parentNode.insertBefore(wrapper, pre);
      wrapper.appendChild(pre);
      wrapper.appendChild(copyButton("copy-code", "Copy code", (function (block) {
        return function () { return block.textContent.replace(/\n$/, ""); };
      })(pre)));
    }
    var actions = element.querySelector(".message-actions");
    if (!actions || actions.querySelector('[data-testid="copy-reply"]') || !markdownOf(element)) return;
    actions.insertBefore(copyButton("copy-reply", "Copy reply (Markdown)", function () {
      return markdownOf(element);
    }), actions.firstChild);
  }

  // ---------------------------------------------------------------- limits

  // The message counts against the chosen model's input limit in tokens, estimated with the
  // server's ratio (chat/limits.py: the socket refuses with the same estimate), and against
  // CHAT_MAX_MESSAGE_CHARS. Nothing is cut: an over-long message stays, says why, and is not sent.

  function characters(text) {
    var pairs = text.match(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g);
    return text.length - (pairs ? pairs.length : 0);  // code points, as Python counts
  }

  function estimateTokens(text) {
    return text ? Math.ceil(characters(text) / config.charsPerToken) : 0;
  }

  function messageBudget() {
    var limits = (config.inputLimits || {})[els.modelSelect.value];
    if (!limits || !config.charsPerToken) return null;
    var system = els.systemPrompt.value;
    var systemTokens = system.trim() ? estimateTokens(system) + config.templateTokens : limits.systemTokens;
    return {
      tokens: estimateTokens(els.input.value) + config.templateTokens + systemTokens,
      limit: limits.maxInputTokens,
    };
  }

  /** Why the message in the box cannot be sent ("" when it can). */
  function lengthProblem() {
    if (chosenTemplate()) return "";
    var chars = characters(els.input.value);
    if (config.maxMessageChars && chars > config.maxMessageChars) {
      return "The message is " + chars.toLocaleString("en") + " characters; the limit is " +
        config.maxMessageChars.toLocaleString("en") + ". Shorten it or split it into several messages.";
    }
    var budget = messageBudget();
    if (budget && budget.tokens > budget.limit) {
      return "The message is about " + budget.tokens.toLocaleString("en") + " tokens with the system prompt; " +
        modelName(els.modelSelect.value) + " accepts at most " + budget.limit.toLocaleString("en") +
        ". Shorten it or split it into several messages.";
    }
    return "";
  }

  function countMessage() {
    var problem = lengthProblem();
    var budget = messageBudget();
    var empty = !els.input.value || chosenTemplate();
    els.count.classList.toggle("over", Boolean(problem));
    els.input.setAttribute("aria-invalid", problem ? "true" : "false");
    if (problem) els.count.textContent = problem;
    else if (empty || !budget) els.count.textContent = "";
    else els.count.textContent = "≈ " + budget.tokens.toLocaleString("en") + " / " +
      budget.limit.toLocaleString("en") + " tokens (with the system prompt)";
    if (els.send) updateControls();
  }

  /** A reply that failed before it started (the worker counted the message as too long, say):
   * the message that was sent goes back into an empty box, to be edited and sent again. */
  function giveBackFailedMessage(messageId, status) {
    var sent = state.lastSent;
    if (!sent || sent.message !== Number(messageId)) return;
    state.lastSent = null;
    if (status !== "error" || els.input.value || !sent.content) return;
    els.input.value = sent.content;
    autosize();
    countMessage();
  }

  // ---------------------------------------------------------------- a disabled model

  function confirmModel() {
    if (state.modelConfirmed) return;
    state.modelConfirmed = true;
    var notice = $("model-notice");
    if (notice) notice.hidden = true;
  }

  var useDefault = $("use-default-model");
  if (useDefault) {
    useDefault.addEventListener("click", function () {
      els.modelSelect.value = config.defaultModel;
      applyModelDefaults();
      confirmModel();
      countMessage();
      hideError();
      if (state.conversation) saveSettings({ model: config.defaultModel });
      els.input.focus();
    });
  }

  // ---------------------------------------------------------------- sidebar

  function conversationItem(id) {
    return els.list.querySelector('[data-testid="conversation-item"][data-conversation-id="' + Number(id) + '"]');
  }

  function buildConversationItem(conv) {
    var li = document.createElement("li");
    li.className = "conversation-item" + (conv.id === state.conversation ? " active" : "");
    li.setAttribute("data-testid", "conversation-item");
    li.setAttribute("data-conversation-id", String(conv.id));
    var link = document.createElement("a");
    link.className = "conversation-link";
    link.setAttribute("data-testid", "conversation-link");
    link.href = conv.url || "/c/" + Number(conv.id) + "/";
    link.textContent = conv.title;
    li.appendChild(link);
    li.appendChild(iconButton("rename", "Rename", "✎"));
    li.appendChild(iconButton("delete", "Delete", "×"));
    return li;
  }

  function iconButton(name, label, symbol) {
    return makeButton("icon-button " + name, name, label, symbol);
  }

  function renderConversationList(items) {
    els.list.textContent = "";
    items.forEach(function (conv) { els.list.appendChild(buildConversationItem(conv)); });
    els.listEmpty.hidden = items.length > 0;
    els.listEmpty.textContent = els.search.value.trim() ? "No conversation matches." : "No conversations yet.";
  }

  function setTitle(id, title) {
    if (!title) return;
    var item = conversationItem(id);
    if (item) item.querySelector(".conversation-link").textContent = title;
    if (id === state.conversation) {
      els.title.textContent = title;
      document.title = title + " · Chat Studio";
    }
  }

  function touchConversation(id, title) {
    var item = conversationItem(id);
    if (!item && !els.search.value.trim()) {
      item = buildConversationItem({ id: id, title: title || "New chat" });
    }
    if (item) {
      els.list.insertBefore(item, els.list.firstChild);
      els.listEmpty.hidden = true;
    }
    var items = els.list.querySelectorAll(".conversation-item");
    for (var i = 0; i < items.length; i++) {
      items[i].classList.toggle("active", Number(items[i].getAttribute("data-conversation-id")) === state.conversation);
    }
    setTitle(id, title);
  }

  var searchTimer = null;
  var searchSerial = 0;
  els.search.addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 250);
  });

  function runSearch() {
    var serial = ++searchSerial;
    var q = els.search.value.trim();
    fetch("/api/conversations/?q=" + encodeURIComponent(q), { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("Search failed (HTTP " + response.status + ").");
        return response.json();
      })
      .then(function (data) {
        if (serial !== searchSerial) return;  // a newer search is on its way
        renderConversationList(data.conversations || []);
      })
      .catch(function (error) { showError(error.message); });
  }

  function startRename(item) {
    if (item.querySelector(".rename-input")) return;
    var link = item.querySelector(".conversation-link");
    var id = Number(item.getAttribute("data-conversation-id"));
    var input = document.createElement("input");
    input.type = "text";
    input.className = "rename-input";
    input.setAttribute("data-testid", "rename-input");
    input.setAttribute("aria-label", "New title");
    input.maxLength = 200;
    input.value = link.textContent;
    link.hidden = true;
    item.insertBefore(input, link);
    input.focus();
    input.select();
    var done = false;
    function finish(save) {
      if (done) return;
      done = true;
      var title = input.value.trim();
      input.remove();
      link.hidden = false;
      if (!save || !title || title === link.textContent) return;
      postJSON("/api/conversations/" + id + "/", { title: title }).then(function (result) {
        if (!result.ok) { showError(errorsText(result.data.errors)); return; }
        setTitle(id, result.data.conversation.title);
      }).catch(function () { showError("Could not rename the conversation (network error)."); });
    }
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      else if (event.key === "Escape") { event.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", function () { finish(true); });
  }

  function deleteConversation(item) {
    var id = Number(item.getAttribute("data-conversation-id"));
    var title = item.querySelector(".conversation-link").textContent;
    if (!window.confirm('Delete "' + title + '"? This cannot be undone.')) return;
    postJSON("/api/conversations/" + id + "/delete/", {}).then(function (result) {
      if (!result.ok) { showError(errorsText(result.data.errors) || "Could not delete it."); return; }
      if (id === state.conversation) { window.location.href = "/"; return; }
      item.remove();
      els.listEmpty.hidden = els.list.children.length > 0;
    }).catch(function () { showError("Could not delete the conversation (network error)."); });
  }

  var deleteAllButton = document.getElementById("delete-all");
  if (deleteAllButton) {
    deleteAllButton.addEventListener("click", function () {
      if (!window.confirm("Delete all your conversations? This cannot be undone.")) return;
      postJSON("/api/conversations/delete-all/", {}).then(function (result) {
        if (!result.ok) { showError("Could not delete them (HTTP " + result.status + ")."); return; }
        window.location.href = "/";
      }).catch(function () { showError("Could not delete the conversations (network error)."); });
    });
  }

  els.list.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button) return;
    var item = button.closest(".conversation-item");
    if (!item) return;
    if (button.classList.contains("rename")) startRename(item);
    else if (button.classList.contains("delete")) deleteConversation(item);
  });

  function setSidebar(open) {
    document.body.classList.toggle("sidebar-open", open);
    els.sidebarToggle.setAttribute("aria-expanded", open ? "true" : "false");
    els.backdrop.hidden = !open;
  }

  els.sidebarToggle.addEventListener("click", function () {
    setSidebar(!document.body.classList.contains("sidebar-open"));
  });
  els.backdrop.addEventListener("click", function () { setSidebar(false); });

  // ---------------------------------------------------------------- settings

  // Every number in the panel (config.settingFields): the sampling settings and max_tokens are
  // saved with the conversation; a field with `saved` false (the seed) only goes with each send.
  var FIELDS = config.settingFields || [];

  function setSettingsOpen(open) {
    els.settingsPanel.hidden = !open;
    els.settingsToggle.setAttribute("aria-expanded", open ? "true" : "false");
  }

  els.settingsToggle.addEventListener("click", function () {
    setSettingsOpen(els.settingsPanel.hidden);
  });

  function modelInfo(slug) {
    var models = config.models || [];
    for (var i = 0; i < models.length; i++) {
      if (models[i].slug === slug) return models[i];
    }
    return null;
  }

  /** An empty field means the chosen model's default: show that default as the placeholder. */
  function applyModelDefaults() {
    var model = modelInfo(els.modelSelect.value);
    var defaults = (model && model.defaults) || {};
    FIELDS.forEach(function (field) {
      var input = $(field.id);
      if (!input || !field.saved) return;
      // The value in force: the model's own, else the server's default (inference/sampling.py).
      var value = defaults[field.name];
      if (value == null) value = (config.samplingDefaults || {})[field.name];
      input.placeholder = value == null ? "default" : String(value) + " (default)";
    });
    var maxTokens = $("max-tokens");
    if (maxTokens && model && model.maxTokensCap) maxTokens.max = String(model.maxTokensCap);
  }

  els.modelSelect.addEventListener("change", function () {
    applyModelDefaults();
    confirmModel();
    countMessage();
  });
  els.systemPrompt.addEventListener("input", countMessage);

  function fieldText(field) {
    var text = $(field.id).value.trim();
    return text === "" ? null : text;
  }

  /** What the browser can see is wrong with a field ("" if nothing); the server checks again. */
  function fieldProblem(field) {
    var input = $(field.id);
    if (input.validity && input.validity.badInput) return field.name + " must be a number.";
    var text = fieldText(field);
    if (text === null) return "";
    var value = Number(text);
    if (isNaN(value)) return field.name + " must be a number.";
    if (field.integer && !/^-?\d+$/.test(text)) return field.name + " must be a whole number.";
    // The seed is never sent to the settings endpoint, and a new chat's settings are only saved with
    // its first message: both are checked here, by the bounds the server checks (inference/sampling.py).
    if (field.saved && state.conversation) return "";
    var input = $(field.id);
    var max = field.max !== "" && field.max != null ? Number(field.max) : (input.max ? Number(input.max) : null);
    var min = Number(field.min);
    var tooLow = field.loOpen ? value <= min : value < min;
    if (tooLow || (max !== null && value > max)) {
      var span = field.loOpen ? "above " + field.min + " and at most " + max : "from " + field.min + " to " + max;
      return field.name + " must be " + (field.integer ? "a whole number " : "") + span + ".";
    }
    return "";
  }

  function settingsProblems() {
    var problems = {};
    FIELDS.forEach(function (field) {
      var problem = fieldProblem(field);
      if (problem) problems[field.name] = problem;
    });
    return problems;
  }

  function settingsValues() {
    var values = { model: els.modelSelect.value, system_prompt: els.systemPrompt.value };
    FIELDS.forEach(function (field) {
      if (field.saved) values[field.name] = fieldText(field);
    });
    return values;
  }

  function errorSlot(name) {
    var slots = els.settingsForm.querySelectorAll("[data-error-for]");
    for (var i = 0; i < slots.length; i++) {
      if (slots[i].getAttribute("data-error-for") === name) return slots[i];
    }
    return null;
  }

  function setFieldError(name, text) {
    var slot = errorSlot(name);
    if (!slot) return false;
    slot.textContent = text;
    slot.hidden = !text;
    var input = els.settingsForm.elements.namedItem(name);
    if (input && input.setAttribute) {
      if (text) {
        input.setAttribute("aria-invalid", "true");
        if (slot.id) input.setAttribute("aria-describedby", slot.id);
      } else {
        input.removeAttribute("aria-invalid");
        input.removeAttribute("aria-describedby");
      }
    }
    if (text) {
      var more = slot.closest("details");
      if (more) more.open = true;  // an error inside "More settings" must not stay folded away
    }
    return true;
  }

  function labelOf(name) {
    for (var i = 0; i < FIELDS.length; i++) {
      if (FIELDS[i].name === name) return FIELDS[i].label;
    }
    if (name === "model") return "Model";
    if (name === "system_prompt") return "System prompt";
    return name;
  }

  /** Each error next to its field; what has no field (and a summary) under the Save button. */
  function showSettingsErrors(errors) {
    var slots = els.settingsForm.querySelectorAll("[data-error-for]");
    for (var i = 0; i < slots.length; i++) setFieldError(slots[i].getAttribute("data-error-for"), "");
    var marked = [];
    var other = [];
    if (typeof errors === "string") {
      other.push(errors);
    } else {
      Object.keys(errors || {}).forEach(function (name) {
        var value = errors[name];
        var text = Array.isArray(value) ? value.join(" ") : String(value);
        if (setFieldError(name, text)) marked.push(labelOf(name));
        else other.push(text);
      });
    }
    if (marked.length) other.unshift("Not saved: check " + marked.join(", ") + ".");
    showSettingsError(other.join(" "));
  }

  function showSettingsError(text) {
    els.settingsError.textContent = text;
    els.settingsError.hidden = !text;
  }

  // Editing a field clears its error.
  els.settingsForm.addEventListener("input", function (event) {
    if (event.target && event.target.name) setFieldError(event.target.name, "");
  });

  function saveSettings(values) {
    els.settingsStatus.textContent = "Saving…";
    return postJSON("/api/conversations/" + state.conversation + "/", values).then(function (result) {
      if (!result.ok) {
        els.settingsStatus.textContent = "";
        showSettingsErrors(result.data.errors || "The settings were not saved (HTTP " + result.status + ").");
        return false;
      }
      showSettingsErrors({});
      els.settingsStatus.textContent = "Saved.";
      return true;
    }).catch(function () {
      els.settingsStatus.textContent = "";
      showSettingsErrors("Could not save the settings (network error).");
      return false;
    });
  }

  els.settingsForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var problems = settingsProblems();
    if (Object.keys(problems).length) {
      els.settingsStatus.textContent = "";
      showSettingsErrors(problems);
      return;
    }
    var values = settingsValues();
    if (state.conversation) {
      saveSettings(values);
    } else {
      state.pendingSettings = values;
      showSettingsErrors({});
      els.settingsStatus.textContent = "Will be saved with the conversation.";
    }
  });

  /** The chat.send params: every field that is set, as typed (saved or not), and the seed. */
  function sendParams() {
    var params = {};
    FIELDS.forEach(function (field) {
      var text = fieldText(field);
      if (text !== null && !fieldProblem(field)) params[field.name] = Number(text);
    });
    return params;
  }

  // ---------------------------------------------------------------- feedback

  // Thumbs up/down, a comment and the answer the person wanted, per finished reply; stored by
  // POST /api/messages/<id>/feedback/ (chat/feedback.py). The page's config carries what is stored.
  var feedbackState = config.feedback || {};
  var feedbackLimits = config.feedbackLimits || {};

  function feedbackOf(id) {
    return feedbackState[id] || { rating: 0, comment: "", edited_content: "" };
  }

  /** A thumb with its word: an icon shipped in static/ (emoji render as empty boxes where no
   * emoji font is installed), coloured by the button, filled when pressed. */
  function feedbackButton(testid, label, icon, word) {
    var button = makeButton("feedback-button", testid, label, "");
    var mark = document.createElement("span");
    mark.className = "icon icon-" + icon;
    mark.setAttribute("aria-hidden", "true");
    var text = document.createElement("span");
    text.textContent = word;
    button.appendChild(mark);
    button.appendChild(text);
    return button;
  }

  function feedbackField(testid, labelText, maxLength) {
    var label = document.createElement("label");
    label.className = "feedback-field";
    label.textContent = labelText;
    var area = document.createElement("textarea");
    area.rows = 3;
    area.setAttribute("data-testid", testid);
    if (maxLength) area.maxLength = maxLength;
    label.appendChild(area);
    return { label: label, area: area };
  }

  function showFeedback(box, id) {
    var fb = feedbackOf(id);
    box.setAttribute("data-rating", String(fb.rating));
    box.querySelector('[data-testid="feedback-up"]').setAttribute("aria-pressed", fb.rating === 1 ? "true" : "false");
    box.querySelector('[data-testid="feedback-down"]').setAttribute("aria-pressed", fb.rating === -1 ? "true" : "false");
    var more = box.querySelector('[data-testid="feedback-more"]');
    more.textContent = fb.comment || fb.edited_content ? "Comment / edit ✓" : "Comment / edit";
  }

  function sendFeedback(box, id, change) {
    var status = box.querySelector('[data-testid="feedback-status"]');
    status.textContent = "Saving…";
    return postJSON("/api/messages/" + Number(id) + "/feedback/", change).then(function (result) {
      if (!result.ok) {
        status.textContent = "";
        showError("Feedback not saved: " + errorsText(result.data.errors));
        return false;
      }
      feedbackState[id] = result.data.feedback;
      showFeedback(box, id);
      status.textContent = "Thanks, saved.";
      return true;
    }).catch(function () {
      status.textContent = "";
      showError("Could not save the feedback (network error).");
      return false;
    });
  }

  /** Add the feedback controls to a finished assistant reply (once). */
  function attachFeedback(element) {
    if (!element || element.getAttribute("data-role") !== "assistant") return;
    var status = element.getAttribute("data-status");
    if (status === "queued" || status === "generating" || element.querySelector(".message-feedback")) return;
    var id = element.getAttribute("data-message-id");
    var box = document.createElement("div");
    box.className = "message-feedback";
    box.setAttribute("data-testid", "feedback");
    var up = feedbackButton("feedback-up", "Good reply", "thumb-up", "Good");
    var down = feedbackButton("feedback-down", "Bad reply", "thumb-down", "Bad");
    var more = document.createElement("button");
    more.type = "button";
    more.className = "button small";
    more.setAttribute("data-testid", "feedback-more");
    var saved = document.createElement("span");
    saved.className = "muted small";
    saved.setAttribute("data-testid", "feedback-status");
    saved.setAttribute("role", "status");
    var form = document.createElement("div");
    form.className = "feedback-form";
    form.setAttribute("data-testid", "feedback-form");
    form.hidden = true;
    var comment = feedbackField("feedback-comment", "Comment", feedbackLimits.maxComment);
    var edited = feedbackField("feedback-edited", "The answer you wanted (edit the reply)", feedbackLimits.maxEdited);
    var save = document.createElement("button");
    save.type = "button";
    save.className = "button small primary";
    save.setAttribute("data-testid", "feedback-save");
    save.textContent = "Save feedback";
    form.appendChild(comment.label);
    form.appendChild(edited.label);
    form.appendChild(save);
    [up, down, more, saved, form].forEach(function (child) { box.appendChild(child); });

    up.addEventListener("click", function () {
      sendFeedback(box, id, { rating: feedbackOf(id).rating === 1 ? 0 : 1 });
    });
    down.addEventListener("click", function () {
      sendFeedback(box, id, { rating: feedbackOf(id).rating === -1 ? 0 : -1 });
    });
    more.addEventListener("click", function () {
      if (form.hidden) {
        var fb = feedbackOf(id);
        comment.area.value = fb.comment;
        // Start from the reply's text, to be edited into the answer that was wanted.
        edited.area.value = fb.edited_content || markdownOf(element);
      }
      form.hidden = !form.hidden;
    });
    save.addEventListener("click", function () {
      var text = edited.area.value;
      var unchanged = text.trim() === markdownOf(element).trim();
      sendFeedback(box, id, { comment: comment.area.value, edited_content: unchanged ? "" : text })
        .then(function (ok) { if (ok) form.hidden = true; });
    });
    showFeedback(box, id);
    element.appendChild(box);
  }

  // ---------------------------------------------------------------- presets

  // A preset (admin-managed) fills the system prompt and the settings; Save (or the first
  // message of a new chat) keeps them. A setting the preset leaves out means the model's default.
  var PRESETS = config.presets || [];
  var presetSelect = $("preset-select");

  PRESETS.forEach(function (preset) {
    var option = document.createElement("option");
    option.value = String(preset.id);
    option.textContent = preset.name;
    if (preset.description) option.title = preset.description;
    presetSelect.appendChild(option);
  });
  presetSelect.hidden = PRESETS.length === 0;
  if (presetSelect.labels && presetSelect.labels[0]) presetSelect.labels[0].hidden = PRESETS.length === 0;

  presetSelect.addEventListener("change", function () {
    var preset = null;
    for (var i = 0; i < PRESETS.length; i++) {
      if (String(PRESETS[i].id) === presetSelect.value) preset = PRESETS[i];
    }
    if (!preset) return;
    els.systemPrompt.value = preset.systemPrompt || "";
    FIELDS.forEach(function (field) {
      if (!field.saved) return;
      var value = preset.settings[field.name];
      $(field.id).value = value == null ? "" : String(value);
      setFieldError(field.name, "");
    });
    els.settingsStatus.textContent = "Preset “" + preset.name + "” applied; Save to keep it.";
  });

  // ---------------------------------------------------------------- prompt templates

  // The page only collects a template's variables; the server fills the prompt (chat.send's
  // `template`), so a value can never change the template itself.
  var TEMPLATES = config.promptTemplates || [];
  var templateSelect = $("template-select");
  var templateForm = $("template-form");
  var templateFields = $("template-fields");

  TEMPLATES.forEach(function (template) {
    var option = document.createElement("option");
    option.value = String(template.id);
    option.textContent = template.title;
    templateSelect.appendChild(option);
  });
  templateSelect.hidden = TEMPLATES.length === 0;

  function chosenTemplate() {
    for (var i = 0; i < TEMPLATES.length; i++) {
      if (String(TEMPLATES[i].id) === templateSelect.value) return TEMPLATES[i];
    }
    return null;
  }

  function showTemplateForm() {
    var template = chosenTemplate();
    templateFields.textContent = "";
    templateForm.hidden = !template;
    els.input.hidden = Boolean(template);
    if (!template) return;
    $("template-description").textContent = template.description || "";
    template.variables.forEach(function (name, index) {
      var label = document.createElement("label");
      label.className = "template-field";
      label.textContent = name.replace(/_/g, " ");
      var area = document.createElement("textarea");
      area.rows = name === "text" ? 3 : 1;
      area.name = name;
      area.setAttribute("data-testid", "template-var-" + name);
      if (config.maxMessageChars) area.maxLength = config.maxMessageChars;
      label.appendChild(area);
      templateFields.appendChild(label);
      if (index === 0) area.focus();
    });
  }

  templateSelect.addEventListener("change", function () {
    showTemplateForm();
    countMessage();
  });
  templateForm.addEventListener("submit", function (event) { event.preventDefault(); });

  /** The chosen template's {id, values}, or an error naming the first empty variable. */
  function templateFrame() {
    var template = chosenTemplate();
    var values = {};
    var missing = null;
    template.variables.forEach(function (name) {
      var value = templateFields.querySelector('[name="' + name + '"]').value;
      if (!value.trim() && missing === null) missing = name;
      values[name] = value;
    });
    if (missing !== null) return { error: "Fill in “" + missing.replace(/_/g, " ") + "” first." };
    return { template: { id: template.id, values: values } };
  }

  function clearTemplateValues() {
    var areas = templateFields.querySelectorAll("textarea");
    for (var i = 0; i < areas.length; i++) areas[i].value = "";
  }

  // ---------------------------------------------------------------- socket

  function socketUrl() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + (config.wsPath || "/ws/chat/");
  }

  function setConnection(stateName, text) {
    els.connection.setAttribute("data-state", stateName);
    els.connection.textContent = text;
  }

  /** Send now, or queue until the socket is open; true when it went out now. */
  function transmit(frame) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(frame));
      return true;
    }
    state.outbox.push(frame);
    return false;
  }

  function connect() {
    state.reconnectTimer = null;
    setConnection("connecting", state.everConnected ? "Reconnecting…" : "Connecting…");
    var socket;
    try {
      socket = new WebSocket(socketUrl());
    } catch (error) {
      scheduleReconnect();
      return;
    }
    state.socket = socket;
    socket.addEventListener("open", function () {
      var reconnected = state.everConnected;
      state.everConnected = true;
      state.backoff = 500;
      setConnection("open", "");
      if (state.generating) {
        // Replay whatever was missed while the socket was down, then keep streaming.
        var after = reconnected ? state.lastSeq[state.generating] || 0 : 0;
        socket.send(JSON.stringify({ type: "chat.resume", message: state.generating, after: after }));
      }
      if (state.lostPending) {
        var lost = state.lostPending;
        state.lostPending = null;
        recoverLostRequest(lost);
      }
      var queued = state.outbox;
      state.outbox = [];
      queued.forEach(function (frame) { socket.send(JSON.stringify(frame)); });
      if (state.pending) state.pending.sent = true;
    });
    socket.addEventListener("message", function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (error) { return; }
      if (frame && typeof frame === "object") handleFrame(frame);
    });
    socket.addEventListener("close", function (event) {
      if (state.socket !== socket) return;
      state.socket = null;
      if (state.pending && state.pending.sent) {
        // The server may or may not have started it (its chat.started was lost): ask the
        // server once the socket is back.
        state.lostPending = state.pending;
        state.pending = null;
        updateControls();
      }
      if (event.code === 4401) {
        state.stopReconnecting = true;
        setConnection("closed", "");
        showError("Your session has ended. Reload the page to log in again.");
        return;
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (state.stopReconnecting || state.reconnectTimer) return;
    var delay = state.backoff;
    state.backoff = Math.min(state.backoff * 2, 5000);
    setConnection("closed", "Connection lost, reconnecting…");
    state.reconnectTimer = setTimeout(connect, delay);
  }

  /** After a request whose chat.started never came: show what the server has for this chat. */
  function recoverLostRequest(lost) {
    if (!state.conversation) {
      if (lost.kind === "send" && !els.input.value && lost.content) els.input.value = lost.content;
      showError("The connection dropped before the reply started. Please send the message again.");
      return;
    }
    fetchThread()
      .then(function (data) {
        var messages = data.messages || [];
        applyThread(data);
        var users = messages.filter(function (m) { return m.role === "user"; });
        var stored = users.length && users[users.length - 1].content === lost.content;
        if (lost.kind === "send" && stored && els.input.value === lost.content) {
          els.input.value = "";  // the server did take it
          autosize();
          countMessage();
        }
      })
      .catch(function () { showError("The connection dropped. Reload the page to see the latest messages."); });
  }

  function syncMessages(messages) {
    var known = {};
    messages.forEach(function (m) { known[m.id] = true; });
    var shown = els.messages.querySelectorAll('[data-testid="message"]');
    for (var i = 0; i < shown.length; i++) {
      if (!known[shown[i].getAttribute("data-message-id")]) shown[i].remove();  // replaced by a regenerate
    }
    messages.forEach(function (m) {
      if (messageElement(m.id)) return;
      var element = createMessage(m.id, m.role, modelName(m.model));
      var body = bodyOf(element);
      var active = m.status === "queued" || m.status === "generating";
      if (m.role === "assistant" && active) {
        setGeneratingLook(element);
        if (!state.generating) {
          state.generating = Number(m.id);
          state.lastSeq[m.id] = 0;
          transmit({ type: "chat.resume", message: Number(m.id), after: 0 });
        }
      } else if (m.role === "assistant") {
        finishMessage({ message: m.id, finish_reason: m.finish_reason, html: m.html,
                        usage: m.usage, timing: m.timing, error: m.error });
      } else if (m.html) {
        body.innerHTML = m.html;  // server-rendered, sanitized
        body.classList.remove("plain");
        element.setAttribute("data-markdown", m.content);
      } else {
        body.textContent = m.content;
        element.setAttribute("data-markdown", m.content);
      }
    });
    scrollToBottom(false);
    updateControls();
  }

  function handleFrame(frame) {
    switch (frame.type) {
      case "chat.started": onStarted(frame); break;
      case "chat.delta": appendDelta(frame); break;
      case "chat.done": finishMessage(frame); break;
      case "chat.error": onError(frame); break;
      case "chat.sync": onSync(frame); break;
      default: break;
    }
  }

  // What the user's other tabs did (docs/protocol.md, chat.sync): the sidebar follows, and a
  // reply started elsewhere in the conversation shown here streams here too, Stop included.
  function onSync(frame) {
    var id = Number(frame.conversation);
    if (frame.event === "started") {
      touchConversation(id, frame.title);
      if (id !== state.conversation || messageElement(frame.message)) return;
      if (frame.replaces != null) removeFrom(frame.replaces);  // regenerated or edited
      if (frame.user_message != null && !messageElement(frame.user_message)) {
        var shown = createMessage(frame.user_message, "user");
        bodyOf(shown).textContent = frame.user_content || "";
        shown.setAttribute("data-markdown", frame.user_content || "");
        attachEditButton(shown);
      }
      mergeVersions(frame.versions);
      var assistant = createMessage(frame.message, "assistant", modelName(frame.model));
      setGeneratingLook(assistant);
      state.lastSeq[frame.message] = 0;
      state.generating = Number(frame.message);
      transmit({ type: "chat.resume", message: Number(frame.message), after: 0 });
      announce("A reply started in another tab…");
      scrollToBottom(true);
      updateControls();
    } else if (frame.event === "switched") {
      if (id === state.conversation && !state.pending && !state.generating) {
        fetchThread().then(applyThread).catch(function () {
          showError("Another tab showed another version. Reload the page to see it.");
        });
      }
    } else if (frame.event === "renamed") {
      setTitle(id, frame.title);
    } else if (frame.event === "deleted") {
      var item = conversationItem(id);
      if (item) item.remove();
      els.listEmpty.hidden = els.list.children.length > 0;
      if (id === state.conversation) leaveDeleted("This conversation was deleted in another tab.");
    } else if (frame.event === "deleted_all") {
      els.list.innerHTML = "";
      els.listEmpty.hidden = false;
      if (state.conversation) leaveDeleted("Your conversations were deleted in another tab.");
    }
  }

  /** The conversation shown was deleted elsewhere: go to a new chat (a message being typed goes
   * with it, and the new page says why), rather than keep a thread that can take nothing. */
  function leaveDeleted(reason) {
    try {
      sessionStorage.setItem("chat-left", JSON.stringify({ reason: reason, draft: els.input.value }));
    } catch (e) { /* storage off: the reason is lost, the move still happens */ }
    window.location.href = els.newChat.getAttribute("href");
  }

  /** A new conversation's export links, as the page shows them for an existing one. */
  function showExportLinks(conversation) {
    var links = document.querySelector('[data-testid="export-links"]');
    if (!links) return;
    links.querySelectorAll("a[data-format]").forEach(function (a) {
      a.href = "/c/" + Number(conversation) + "/export." + a.getAttribute("data-format");
    });
    links.hidden = false;
  }

  function onStarted(frame) {
    var pending = state.pending;
    state.pending = null;
    var wasNew = !state.conversation;
    if (wasNew) {
      state.conversation = frame.conversation;
      config.conversation = frame.conversation;
      window.history.replaceState(null, "", "/c/" + Number(frame.conversation) + "/");
      showExportLinks(frame.conversation);
      if (state.pendingSettings) {
        var values = state.pendingSettings;
        state.pendingSettings = null;
        saveSettings(values);
      } else if (els.systemPrompt.value.trim()) {
        saveSettings(settingsValues());
      }
    } else if (frame.conversation !== state.conversation) {
      return;  // another tab's conversation: not shown here
    }
    touchConversation(frame.conversation, frame.title);

    // A regenerated reply or an edited message: the branch it replaces goes (a version now).
    if (frame.replaces != null && Number(frame.replaces) !== Number(frame.message)) removeFrom(frame.replaces);
    mergeVersions(frame.versions);
    if (pending && pending.template) clearTemplateValues();
    if (pending && pending.kind === "send" && !pending.template) {
      // Cleared only now that the server took it: a refused message stays in the box.
      if (els.input.value === pending.content) {
        els.input.value = "";
        autosize();
        countMessage();
      }
      state.lastSent = { message: Number(frame.message), content: pending.content };
    }
    announce("The assistant is replying…");
    if (frame.user_message != null && !messageElement(frame.user_message)) {
      var user = createMessage(frame.user_message, "user");
      // Plain text until the page is reloaded (the server renders the Markdown then). A
      // template's prompt was filled by the server, an edited message sent from its own box:
      // show what the server stored.
      if (typeof frame.user_content === "string") {
        bodyOf(user).textContent = frame.user_content;
        user.setAttribute("data-markdown", frame.user_content);
        if (frame.template) {
          user.querySelector(".message-meta").textContent =
            "You · template " + frame.template.name + " v" + frame.template.version;
        }
      } else {
        bodyOf(user).textContent = pending && pending.content != null ? pending.content : "";
        user.setAttribute("data-markdown", bodyOf(user).textContent);
      }
      attachEditButton(user);
    }
    var assistant = messageElement(frame.message);
    if (assistant) {
      clearStreamedText(assistant);
    } else {
      assistant = createMessage(frame.message, "assistant", modelName(frame.model));
    }
    setGeneratingLook(assistant);
    state.lastSeq[frame.message] = 0;
    state.generating = Number(frame.message);
    state.stickToBottom = true;
    scrollToBottom(true);
    updateControls();
  }

  function onError(frame) {
    var pending = state.pending;
    var aboutMessage = frame.message_id == null ? null : Number(frame.message_id);
    // A refused send carries no message id; a refused regenerate carries the replaced reply's.
    var refusesPending = pending && (
      (pending.kind === "send" && aboutMessage === null) ||
      ((pending.kind === "regenerate" || pending.kind === "edit") && aboutMessage === pending.replaces));
    if (refusesPending) {
      state.pending = null;
      if (pending.kind === "send" && !els.input.value && pending.content) els.input.value = pending.content;
      if (pending.kind === "send") {
        countMessage();
        els.input.focus();  // refused (too long, say): the message is still there, to be edited
      }
      // A refused edit keeps its box open with the text, to be changed and sent again.
    }
    if (frame.code === "stream_failed" && aboutMessage !== null && aboutMessage === state.generating) {
      // The server lost this reply's stream for a moment: ask again from the last seq seen.
      var tries = (state.resumeTries[aboutMessage] || 0) + 1;
      state.resumeTries[aboutMessage] = tries;
      if (tries <= 5) {
        setTimeout(function () {
          if (state.generating === aboutMessage) {
            transmit({ type: "chat.resume", message: aboutMessage, after: state.lastSeq[aboutMessage] || 0 });
          }
        }, 1000 * tries);
        updateControls();
        return;
      }
    }
    showError(frame.message || frame.code || "The request was refused.");
    if (frame.code === "not_found" && aboutMessage !== null && aboutMessage === state.generating) {
      state.generating = null;
    }
    updateControls();
  }

  // ---------------------------------------------------------------- actions

  function send() {
    var content = els.input.value;
    var usingTemplate = Boolean(chosenTemplate());
    if ((!usingTemplate && !content.trim()) || state.generating || state.pending) return;
    if (!state.modelConfirmed) {
      showError("This conversation's model was disabled. Choose “Use " + modelName(config.defaultModel) +
                "” above, or another model in Settings, then send again.");
      return;
    }
    var tooLong = usingTemplate ? "" : lengthProblem();
    if (tooLong) {
      showError(tooLong);
      els.input.focus();
      return;
    }
    var problems = settingsProblems();
    if (Object.keys(problems).length) {
      setSettingsOpen(true);
      showSettingsErrors(problems);
      showError("Fix the settings first: " + Object.keys(problems).map(function (name) {
        return problems[name];
      }).join(" "));
      return;
    }
    var filled = usingTemplate ? templateFrame() : null;
    if (filled && filled.error) {
      showError(filled.error);
      return;
    }
    hideError();
    var frame = { type: "chat.send", conversation: state.conversation || null };
    if (filled) frame.template = filled.template;
    else frame.content = content;
    if (els.modelSelect.value) frame.model = els.modelSelect.value;
    var params = sendParams();
    if (Object.keys(params).length) frame.params = params;
    // A new chat's system prompt must apply to its very first reply.
    if (!state.conversation && els.systemPrompt.value.trim()) frame.system_prompt = els.systemPrompt.value;
    state.pending = { kind: "send", content: filled ? null : content, template: Boolean(filled) };
    state.pending.sent = transmit(frame);
    updateControls();
  }

  function regenerate(messageId) {
    if (state.generating || state.pending) return;
    if (!state.modelConfirmed) {
      showError("This conversation's model was disabled. Choose “Use " + modelName(config.defaultModel) +
                "” above, or another model in Settings, first.");
      return;
    }
    hideError();
    state.pending = { kind: "regenerate", replaces: messageId };
    state.pending.sent = transmit({ type: "chat.regenerate", message: messageId });
    updateControls();
  }

  els.composer.addEventListener("submit", function (event) {
    event.preventDefault();
    send();
  });

  els.input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });

  function autosize() {
    els.input.style.height = "auto";
    els.input.style.height = Math.min(els.input.scrollHeight, 240) + "px";
  }
  els.input.addEventListener("input", function () {
    autosize();
    countMessage();
  });

  function stopReply() {
    if (!state.generating) return;
    transmit({ type: "chat.stop", message: state.generating });
    announce("Stopping the reply…");
    els.input.focus();
  }

  els.stop.addEventListener("click", stopReply);

  // Page-wide keys: Esc stops the running reply, Ctrl+Shift+O (⌘+Shift+O) starts a new chat.
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.isComposing) return;
    if (event.key === "Escape" && state.generating) {
      event.preventDefault();
      stopReply();
    } else if ((event.ctrlKey || event.metaKey) && event.shiftKey && !event.altKey && event.code === "KeyO") {
      event.preventDefault();
      window.location.href = els.newChat.getAttribute("href");
    }
  });

  els.bannerClose.addEventListener("click", hideError);

  // ---------------------------------------------------------------- start

  applyModelDefaults();
  var assistants = els.messages.querySelectorAll('[data-testid="message"][data-role="assistant"]');
  for (var a = 0; a < assistants.length; a++) {
    if (Number(assistants[a].getAttribute("data-message-id")) === config.activeMessage) continue;
    attachCopyButtons(assistants[a]);
    attachFeedback(assistants[a]);
  }
  attachEditButtons();
  restoreAfterDeleted();
  countMessage();
  if (config.activeMessage) {
    // A reply was still generating when the page loaded: replay it from the start.
    var active = messageElement(config.activeMessage);
    if (active) {
      clearStreamedText(active);
      setGeneratingLook(active);
    }
    state.generating = Number(config.activeMessage);
    state.lastSeq[state.generating] = 0;
  }
  updateControls();
  scrollToBottom(true);
  connect();
})();
