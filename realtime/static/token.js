// The token of the dashboard pages (live table, group page), shared by both: taken from #token=... once
// (fragments never reach the server or its logs) and stripped from the address bar at once, then kept in
// sessionStorage: this tab only, gone when the tab closes, never on disk. (localStorage would keep an admin
// token on disk for every script of this origin, forever.)
"use strict";
window.faultlineToken = (function () {
  const TOKEN_KEY = "faultline.token";
  try { localStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }  // left by older versions
  let memoryToken = null;  // when the browser refuses sessionStorage too
  function save(token) {
    memoryToken = token;
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* memory only */ }
  }
  function forget() {
    memoryToken = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* memory only */ }
  }
  function take() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      save(decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    try { return sessionStorage.getItem(TOKEN_KEY) || memoryToken; } catch (e) { return memoryToken; }
  }
  // The "paste a token" dialog both pages show: built here once, so the pages share one copy of it.
  let onToken = null;
  function dialog() {
    let dlg = document.getElementById("login");
    if (dlg) return dlg;
    const make = (tag, props) => Object.assign(document.createElement(tag), props);
    dlg = make("dialog", { id: "login" });
    const form = make("form", { id: "login-form", method: "dialog" });
    const input = make("input", { id: "login-token", type: "password", autocomplete: "off", placeholder: "token",
                                  required: true });
    form.append(make("h2", { textContent: "Connect to Faultline" }),
                make("p", { className: "muted", textContent: "Paste the dashboard (read-only) or admin token. " +
                            "It is kept for this tab only, until you close it." }),
                make("p", { id: "login-error", className: "error", hidden: true }),
                input, make("button", { type: "submit", textContent: "Connect" }));
    form.addEventListener("submit", () => {
      save(input.value.trim());
      input.value = "";
      if (onToken) onToken();
    });
    dlg.append(form);
    document.body.append(dlg);
    return dlg;
  }
  // Show the dialog (with `message`, if any, in red); `then` runs once a token was pasted.
  function ask(message, then) {
    const dlg = dialog();
    onToken = then;
    const error = document.getElementById("login-error");
    error.hidden = !message;
    error.textContent = message || "";
    if (!dlg.open) dlg.showModal();
  }
  return { save, forget, take, ask };
})();
