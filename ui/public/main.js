// Shows the studio's version, read through the IPC bridge.
const invoke = window.__TAURI_INTERNALS__ && window.__TAURI_INTERNALS__.invoke;
if (invoke) {
  invoke("app_info").then((info) => {
    document.getElementById("version").textContent = `${info.name} ${info.version}`;
  });
}

// The model library the CLI shares (`peft-studio-cli models …`).
function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}
if (invoke) {
  const body = document.querySelector("#models tbody");
  invoke("list_models")
    .then((models) => {
      body.replaceChildren();
      if (models.length === 0) {
        const row = body.insertRow();
        cell(row, "No models yet: peft-studio-cli models import PATH, or models download REPO");
        row.firstChild.colSpan = 6;
      }
      for (const m of models) {
        const row = body.insertRow();
        cell(row, m.name);
        cell(row, m.architecture);
        cell(row, `${(m.parameters / 1e6).toFixed(1)} M`);
        cell(row, m.context_length.toLocaleString());
        cell(row, `${(m.size_bytes / 1e6).toFixed(0)} MB`);
        cell(row, m.source);
      }
    })
    .catch((e) => {
      body.replaceChildren();
      cell(body.insertRow(), `Could not read the model library: ${e}`);
    });
}
