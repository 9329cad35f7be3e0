// The channel: long-polls the Slack stand-in's state, renders it, and turns typing and clicks into
// the requests Slack would send the bot (the server signs them).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  let state = null;
  let me = null;
  const openThreads = new Set();
  let followNext = true;  // the first render, and after the reader sends a command, go to the newest

  function time(ts) {
    return new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function toast(text) {
    const t = $("toast");
    t.textContent = text;
    t.classList.add("shown");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => t.classList.remove("shown"), 5000);
  }

  async function post(path, body) {
    const resp = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    const answer = await resp.json();
    if (!resp.ok) throw new Error(answer.error || resp.statusText);
    if (answer.status !== 200) throw new Error("the bot answered HTTP " + answer.status);
    return answer;
  }

  function messageEl(msg, opts) {
    const e = document.createElement("div");
    e.className = "message" + (opts.ephemeral ? " ephemeral" : "");
    if (msg.ts) e.dataset.ts = msg.ts;
    if (opts.reply !== undefined) e.dataset.reply = opts.reply;
    const avatar = document.createElement("div");
    avatar.className = "avatar";
    avatar.textContent = "⟲";
    const body = document.createElement("div");
    body.className = "body";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.innerHTML = '<span class="name">rollback-bot</span><span class="badge">APP</span>' +
      '<span class="time">' + time(opts.at) + "</span>" +
      (msg.updates ? '<span class="edited">(edited)</span>' : "") +
      (opts.ephemeral ? '<span class="only-you">Only visible to you</span>' : "");
    body.appendChild(meta);
    if (msg.blocks && msg.blocks.length) {
      body.appendChild(window.BlockKit.renderBlocks(msg.blocks, state.users));
    } else {
      const text = document.createElement("div");
      text.className = "bk-text";
      text.innerHTML = window.BlockKit.mrkdwn(msg.text || "", state.users);
      body.appendChild(text);
    }
    for (const f of opts.files || []) {
      const chip = document.createElement("a");  // opens the uploaded file, as Slack does
      chip.className = "file";
      chip.href = "/files/" + encodeURIComponent(f.id);
      chip.target = "_blank";
      chip.rel = "noopener";
      chip.textContent = "📄 " + f.filename + " (" + f.length.toLocaleString() + " bytes)";
      body.appendChild(chip);
    }
    body.querySelectorAll("button.bk-button").forEach((b) => {
      b.addEventListener("click", () => click(b, msg, opts));
    });
    e.appendChild(avatar);
    e.appendChild(body);
    return e;
  }

  async function click(b, msg, opts) {
    b.disabled = true;
    const body = { user: me, action_id: b.dataset.actionId, value: b.dataset.value };
    if (opts.reply !== undefined) body.reply = opts.reply; else body.ts = msg.ts;
    try {
      await post("/api/click", body);
    } catch (err) {
      toast("Click not delivered: " + err.message);
    } finally {
      setTimeout(() => { b.disabled = false; }, 800);
    }
  }

  function render() {
    $("channel-name").textContent = "# " + state.channel.name;
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const top = state.messages.filter((m) => !m.thread_ts);
    const items = top.map((m) => ({ at: parseFloat(m.ts), msg: m }));
    for (const r of state.ephemeral) {
      if (r.owner === me) items.push({ at: r.at, msg: r, reply: r.id });
    }
    items.sort((a, b) => a.at - b.at);
    list.replaceChildren();
    for (const item of items) {
      if (item.reply !== undefined) {
        list.appendChild(messageEl(item.msg, { at: item.at, ephemeral: true, reply: item.reply }));
        continue;
      }
      const m = item.msg;
      const shown = messageEl(m, { at: item.at });
      list.appendChild(shown);
      const replies = state.messages.filter((r) => r.thread_ts === m.ts);
      const files = state.files.filter((f) => f.thread_ts === m.ts);
      if (!replies.length && !files.length) continue;
      // the thread sits under its message, as Slack shows "N replies"
      const body = shown.querySelector(".body");
      const toggle = document.createElement("button");
      toggle.className = "thread-toggle";
      toggle.type = "button";
      const n = replies.length + files.length;
      toggle.textContent = (openThreads.has(m.ts) ? "Hide " : "") + n + (n === 1 ? " reply" : " replies");
      toggle.addEventListener("click", () => {
        if (openThreads.has(m.ts)) openThreads.delete(m.ts); else openThreads.add(m.ts);
        render();
      });
      body.appendChild(toggle);
      if (openThreads.has(m.ts)) {
        const thread = document.createElement("div");
        thread.className = "thread";
        for (const r of replies) thread.appendChild(messageEl(r, { at: parseFloat(r.ts) }));
        if (files.length) thread.appendChild(messageEl({ text: "The full log of the job:" },
          { at: parseFloat(m.ts), files: files }));
        body.appendChild(thread);
      }
    }
    // follow new messages, unless the reader scrolled up to read something older
    if (atBottom || followNext) list.scrollTop = list.scrollHeight;
    followNext = false;
    renderLambda(state.lambda);
  }

  function renderLambda(l) {
    $("lambda-function").textContent = l.function || "";
    const v = $("lambda-version");
    v.textContent = l.version || (l.error ? "unknown" : "…");
    v.dataset.version = l.version || "";
    v.title = l.error || "";
    $("lambda-sha").textContent = l.code_sha256 ? l.code_sha256.slice(0, 16) + "…" : "–";
    $("lambda-checked").textContent = l.checked || "–";
  }

  function renderUsers() {
    const box = $("as-user");
    box.replaceChildren();
    const label = document.createElement("span");
    label.textContent = "Typing as";
    box.appendChild(label);
    for (const [id, name] of Object.entries(state.users)) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "user" + (id === me ? " active" : "");
      b.dataset.user = id;
      b.setAttribute("role", "radio");
      b.setAttribute("aria-checked", id === me ? "true" : "false");
      b.textContent = name;
      b.addEventListener("click", () => { me = id; renderUsers(); render(); $("composer").focus(); });
      box.appendChild(b);
    }
  }

  async function poll() {
    let revision = -1;
    for (;;) {
      try {
        const resp = await fetch("/api/state?after=" + revision);
        state = await resp.json();
        revision = state.revision;
        if (me === null) { me = Object.keys(state.users)[0]; renderUsers(); }
        render();
      } catch (err) {
        toast("Lost the demo server (" + err.message + "); retrying");
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  $("composer-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("composer");
    const text = input.value.trim();
    if (!text) return;
    if (!text.startsWith("/rollback")) { toast("Only /rollback commands work here, e.g. /rollback prod"); return; }
    input.value = "";
    followNext = true;
    try {
      await post("/api/command", { user: me, text: text });
    } catch (err) {
      toast("Command not delivered: " + err.message);
      input.value = text;
    }
  });

  $("trip-alarm").addEventListener("click", async () => {
    try {
      const resp = await fetch("/api/alarm", { method: "POST", headers: { "Content-Type": "application/json" },
        body: "{}" });
      const answer = await resp.json();
      toast(answer.said || answer.error);
    } catch (err) {
      toast("Could not trip the alarm: " + err.message);
    }
  });

  poll();
})();
