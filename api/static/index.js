// The landing page: in development, the classes running now (GET /v1/dev/live, loopback
// only) with a view link each. Text via textContent only; links built with the DOM.
"use strict";
(() => {
  const list = document.getElementById("classes");
  const note = document.getElementById("note");
  function show(classes) {
    if (!classes.length) {
      list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "no class is running" }));
      return;
    }
    list.replaceChildren(...classes.map((c) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = c.view;
      a.textContent = c.title || c.id;
      li.append(a, document.createTextNode(` · ${c.phase} · ${c.id}`));
      return li;
    }));
  }
  async function refresh() {
    try {
      const reply = await fetch("/v1/dev/live");
      if (!reply.ok) {
        list.replaceChildren();
        note.textContent = "This edge lists its classes only in development mode, to loopback clients. Ask your app or operator for a view link.";
        note.hidden = false;
        return;
      }
      show((await reply.json()).classes);
      setTimeout(refresh, 5000);
    } catch (e) {
      setTimeout(refresh, 5000);
    }
  }
  refresh();
})();
