// Shows the studio's version, read through the IPC bridge.
const invoke = window.__TAURI_INTERNALS__ && window.__TAURI_INTERNALS__.invoke;
if (invoke) {
  invoke("app_info").then((info) => {
    document.getElementById("version").textContent = `${info.name} ${info.version}`;
  });
}
