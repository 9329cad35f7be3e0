// Block Kit to HTML, for the blocks rollback-bot sends: header, section (mrkdwn text, fields,
// accessory button), context, divider, actions (buttons and their styles). Pure: no network.
(function () {
  "use strict";

  function escapeHtml(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  // Slack escapes &, < and > in message text; undo that before we escape for HTML.
  function unescapeSlack(s) {
    return s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
  }

  function styleText(s) {
    // *bold*, _italic_, ~strike~ at word boundaries, as Slack reads them
    return s
      .replace(/(^|[\s(>])\*([^*\n]+)\*(?=$|[\s).,:;!?<])/gm, "$1<b>$2</b>")
      .replace(/(^|[\s(>])_([^_\n]+)_(?=$|[\s).,:;!?<])/gm, "$1<i>$2</i>")
      .replace(/(^|[\s(>])~([^~\n]+)~(?=$|[\s).,:;!?<])/gm, "$1<s>$2</s>");
  }

  function mrkdwn(text, users) {
    users = users || {};
    // Code and <…> links become placeholders first, so styling never reaches inside them.
    const kept = [];
    const keep = (html) => "\u0000" + (kept.push(html) - 1) + "\u0000";
    const token = /```([\s\S]*?)```|`([^`\n]+)`|<([^<>\n]+)>/g;
    let last = 0, m, out = "";
    while ((m = token.exec(text)) !== null) {
      out += escapeHtml(unescapeSlack(text.slice(last, m.index)));
      if (m[1] !== undefined) out += keep("<pre>" + escapeHtml(unescapeSlack(m[1].replace(/^\n/, ""))) + "</pre>");
      else if (m[2] !== undefined) out += keep("<code>" + escapeHtml(unescapeSlack(m[2])) + "</code>");
      else out += keep(link(m[3], users));
      last = token.lastIndex;
    }
    out += escapeHtml(unescapeSlack(text.slice(last)));
    out = styleText(out);
    // a line starting with ">" is a quote
    out = out.split("\n").map((line) => line.startsWith("&gt;")
      ? '<blockquote>' + line.slice(4) + "</blockquote>" : line).join("\n");
    out = out.replace(/\n/g, "<br>").replace(/<\/blockquote><br>/g, "</blockquote>");
    return out.replace(/\u0000(\d+)\u0000/g, (_, i) => kept[Number(i)]).replace(/<\/pre><br>/g, "</pre>");
  }

  function link(inner, users) {
    const [target, label] = inner.split("|", 2);
    if (target.startsWith("@")) {
      const id = target.slice(1);
      return '<span class="mention">@' + escapeHtml(users[id] || label || id) + "</span>";
    }
    if (target.startsWith("#")) {
      return '<span class="mention">#' + escapeHtml(label || target.slice(1)) + "</span>";
    }
    if (target.startsWith("!date^")) {  // Slack shows each reader the time in their own zone
      const when = new Date(Number(target.split("^")[1]) * 1000);
      return '<time datetime="' + when.toISOString() + '">' +
        escapeHtml(when.toLocaleString([], {dateStyle: "medium", timeStyle: "short"})) + "</time>";
    }
    if (target.startsWith("!")) {
      return '<span class="mention">@' + escapeHtml(label || target.slice(1)) + "</span>";
    }
    if (/^(https?:|mailto:)/.test(target)) {
      return '<a href="' + escapeHtml(target) + '" target="_blank" rel="noopener">' +
        escapeHtml(unescapeSlack(label || target)) + "</a>";
    }
    return escapeHtml("<" + inner + ">");
  }

  function textHtml(obj, users) {
    if (!obj) return "";
    return obj.type === "mrkdwn" ? mrkdwn(obj.text || "", users) : escapeHtml(unescapeSlack(obj.text || ""));
  }

  function el(tag, cls, html) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (html !== undefined) e.innerHTML = html;
    return e;
  }

  function button(b, users) {
    const e = el("button", "bk-button" + (b.style ? " " + b.style : ""), textHtml(b.text, users));
    e.type = "button";
    e.dataset.actionId = b.action_id || "";
    e.dataset.value = b.value || "";
    if (b.url) e.dataset.url = b.url;
    return e;
  }

  function renderBlock(block, users) {
    switch (block.type) {
      case "header":
        return el("div", "bk-header", textHtml(block.text, users));
      case "divider":
        return el("hr", "bk-divider");
      case "context": {
        const e = el("div", "bk-context");
        for (const item of block.elements || []) {
          if (item.type === "image") {
            const img = el("img", "bk-context-image");
            img.src = item.image_url; img.alt = item.alt_text || "";
            e.appendChild(img);
          } else {
            e.appendChild(el("span", "bk-context-text", textHtml(item, users)));
          }
        }
        return e;
      }
      case "section": {
        const e = el("div", "bk-section");
        const body = el("div", "bk-section-body");
        if (block.text) body.appendChild(el("div", "bk-text", textHtml(block.text, users)));
        if (block.fields && block.fields.length) {
          const grid = el("div", "bk-fields");
          for (const f of block.fields) grid.appendChild(el("div", "bk-field", textHtml(f, users)));
          body.appendChild(grid);
        }
        e.appendChild(body);
        if (block.accessory && block.accessory.type === "button") {
          const acc = el("div", "bk-accessory");
          acc.appendChild(button(block.accessory, users));
          e.appendChild(acc);
        }
        return e;
      }
      case "actions": {
        const e = el("div", "bk-actions");
        for (const item of block.elements || []) {
          if (item.type === "button") e.appendChild(button(item, users));
        }
        return e;
      }
      default:
        return el("div", "bk-unsupported", "[" + escapeHtml(String(block.type)) + " block]");
    }
  }

  function renderBlocks(blocks, users) {
    const root = el("div", "bk");
    for (const block of blocks || []) {
      const e = renderBlock(block, users);
      if (block.block_id) e.dataset.blockId = block.block_id;
      root.appendChild(e);
    }
    return root;
  }

  window.BlockKit = { renderBlocks: renderBlocks, mrkdwn: mrkdwn };
})();
