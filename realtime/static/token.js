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
  return { save, forget, take };
})();
